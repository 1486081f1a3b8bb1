"""Per-group measures of ``faceanonymixer evaluate`` (eval/group_scores.py): known answers on hand-made embeddings,
and the command end to end on identity folders of the sample photos with a groups CSV."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceanonymixer import cli, registry
from faceanonymixer.eval import group_scores as GS
from faceanonymixer.eval import groups as G
from faceanonymixer.eval.dataset import Dataset, make_pairs


def _unit(v):
    v = torch.as_tensor(np.asarray(v, dtype=np.float32))
    return v / v.norm(dim=1, keepdim=True)


def test_identity_measures_known_answers(tmp_path):
    # 4 people x 2 images; people 0, 1 in group 'a', 2, 3 in group 'b'
    ds = Dataset(root=tmp_path, people=["p0", "p1", "p2", "p3"],
                 items=[f"p{k // 2}/{k % 2}.jpg" for k in range(8)], person_of=np.repeat(np.arange(4), 2))
    pairs = make_pairs(ds, n_impostor=1000, stolen_images=1, seed=0)
    base = np.eye(8)[[0, 0, 1, 1, 2, 2, 3, 3]]
    e_orig = _unit(base + 0.01)
    # protected: group a keeps its people apart, group b's images all collapse to one face
    prot = base.copy()
    prot[4:] = np.eye(8)[5]
    e_k1 = _unit(prot + 0.01 * np.arange(8)[:, None] / 8)
    e_k1 = _unit(e_k1.numpy() + 0.2 * np.eye(8)[6])                     # far from every original
    labels = G.GroupLabels("test", ["g"], {f"p{p}": {"g": "a" if p < 2 else "b"} for p in range(4)})
    tables = {}
    thr = GS.identity_measures(labels, ["g"], ds, pairs, "r", e_orig, e_k1, e_k1, pairs.stolen[:, 1],
                               0.5, tables)
    a, b = tables["g"]["a"], tables["g"]["b"]
    assert a["tar[r]"]["value"] == 1.0 and a["tar[r]"]["n"] == 2 and b["tar[r]"]["n"] == 2
    assert b["far[r]"]["n"] == 4 and b["far[r]"]["value"] == 1.0       # one face for everybody in b
    assert a["far[r]"]["n"] == 4 and a["far[r]"]["value"] == 0.0
    assert a["psr[r]"]["n"] == 4 and 0 <= a["psr[r]"]["value"] <= 1
    assert a["stolen_key_accept[r]"]["n"] + b["stolen_key_accept[r]"]["n"] == len(pairs.stolen)
    assert set(thr) == {"protected", "clean", "operating_fmr"}
    gp = G.gaps(tables["g"])
    assert gp["far[r]"]["worst"] == "b" and gp["far[r]"]["ratio"] is None      # a has no false matches


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    samples = registry.data_dir() / "samples"
    if not (samples / "obama.jpg").is_file():
        pytest.skip(f"sample photos not found in {samples} (run `make install`)")
    root = tmp_path_factory.mktemp("groups_eval") / "ids"
    for person in ("Barack_Obama", "Joe_Biden", "Other_Person"):
        (root / person).mkdir(parents=True)
    for f in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        (root / "Barack_Obama" / f).write_bytes((samples / f).read_bytes())
    b = Image.open(samples / "biden.jpg").convert("RGB")
    b.save(root / "Joe_Biden" / "biden_0001.jpg", quality=95)
    b.transpose(Image.FLIP_LEFT_RIGHT).save(root / "Joe_Biden" / "biden_0002.jpg", quality=95)
    for k, f in enumerate(("obama2.jpg", "obama3.jpg")):
        Image.open(samples / f).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(
            root / "Other_Person" / f"other_{k}.jpg", quality=95)
    csv = root.parent / "groups.csv"
    csv.write_text("image,band,gender\n"
                   "Barack_Obama,A,male\n"                     # a person folder: all their images
                   "Joe_Biden/biden_0001.jpg,A,male\n"         # an image by its relative path
                   "biden_0002.jpg,A,\n"                       # an image by its file name
                   "Other_Person,B,female\n"
                   "nobody.jpg\n")                             # a bad row: listed, not fatal
    return root, csv


def test_evaluate_per_group_end_to_end(people, tmp_path, capsys):
    root, csv = people
    out = tmp_path / "report"
    rc = cli.main(["evaluate", "--data", str(root), "--out", str(out), "--groups", str(csv), "--seed", "1",
                   "--set", "variants=[blur]", "--set", "main_variant=blur",
                   "--set", "recognisers=[dlib-resnet,sface]", "--set", "threads=1", "--set", "split=null",
                   "--set", "grid_people=1", "--set", "soft_biometrics=false", "--set", "attacks.names=[]"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    band = m["groups"]["band"]
    assert set(m["groups"]) == {"band", "gender"} and set(band) == {"A", "B"}
    assert band["A"]["face_found"]["n"] == 5 and band["B"]["face_found"]["n"] == 2
    a, b = band["A"], band["B"]
    # white box (sface = the attack network without the method) is never used for a group verdict
    assert not any("sface" in k for k in a) and {"tar[dlib-resnet]", "far[dlib-resnet]", "psr[dlib-resnet]",
                                                 "stolen_key_accept[dlib-resnet]"} <= set(a)
    n_found_a = a["face_found"]["k"]
    assert a["psr[dlib-resnet]"]["n"] == n_found_a
    assert b["far[dlib-resnet]"]["n"] == 0 and b["far[dlib-resnet]"]["value"] is None    # one person in B
    assert a["far[dlib-resnet]"]["n"] > 0 and b["tar[dlib-resnet]"]["n"] == 1
    assert m["groups"]["gender"]["female"]["face_found"]["n"] == 2
    assert m["groups"]["gender"]["male"]["face_found"]["n"] == 4          # biden_0002 has no gender
    info = m["groups_info"]
    assert info["labels"]["n_bad"] == 1 and info["labels"]["bad"][0]["name"] == "nobody.jpg"
    assert info["variant"] == "blur" and "dlib-resnet" in info["thresholds"]
    for grouping in m["groups"].values():
        for row in grouping.values():
            for v in row.values():
                assert v["value"] is None or v["lo"] <= v["value"] <= v["hi"]
    md = (out / "report.md").read_text()
    assert "## Per group" in md and "### band" in md and md.index("## Per group") < md.index("## Figures")
    assert (out / "plots" / "groups.png").is_file()
    page = (out / "report.html").read_text()
    assert "<h2>Per group</h2>" in page and page.index("<h2>Per group</h2>") < page.index("<h2>Figures</h2>")
    assert page.count("data:image/png;base64,") >= 2 and "<td>far[dlib-resnet] %</td>" in page
    assert "band: tar[dlib-resnet]" in printed and "band: psr[dlib-resnet]" in printed
