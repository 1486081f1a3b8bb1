"""eval/groups.py (labels, intervals, gaps, table, plot) and the per-group section of ``faceanonymixer model-report``
end to end on UTKFace-named copies of the sample photos with a tiny random generator + encoder."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from faceanonymixer.eval import groups as G


def test_utkface_names_parse_and_bad_names_are_listed():
    assert G.parse_utkface_name("25_1_2_20170116174525125.jpg.chip.jpg") == {
        "cohort": "Asian 13-64", "race": "Asian", "gender": "female", "age": "13-64"}
    assert G.parse_utkface_name("some/dir/8_0_0_x.jpg")["cohort"] == "under 13"
    assert G.parse_utkface_name("65_0_4_x.jpg") == {"cohort": "65 and over", "race": "Others", "gender": "male",
                                                    "age": "65 and over"}
    assert G.parse_utkface_name("12_0_1_x.jpg")["age"] == "under 13" and G.parse_utkface_name("13_0_1_x.jpg")["age"] == "13-64"
    assert G.parse_utkface_name("64_0_3_x.jpg")["cohort"] == "Indian 13-64"
    names = ["30_0_0_a.jpg", "notutk.jpg", "25_3_0_b.jpg", "25_0_9_c.jpg", "39_1_20170104.jpg", "200_0_0_d.jpg"]
    lab = G.utkface_labels(names)
    assert list(lab.labels) == ["30_0_0_a.jpg"]
    why = dict(lab.bad)
    assert set(why) == set(names[1:])
    assert "not age_gender_race" in why["notutk.jpg"] and "gender code 3" in why["25_3_0_b.jpg"]
    assert "race code 9" in why["25_0_9_c.jpg"] and "age 200" in why["200_0_0_d.jpg"]
    assert "not age_gender_race" in why["39_1_20170104.jpg"]   # a real UTKFace name missing its race field
    assert lab.summary()["n_bad"] == 5 and lab.of("x/30_0_0_a.jpg")["race"] == "White"


def test_groups_csv_several_groupings_and_bad_rows(tmp_path):
    p = tmp_path / "groups.csv"
    p.write_text("image,race,gender\n"
                 "anna/1.jpg,Black,female\n"
                 "bob.jpg,White,\n"                 # one grouping left empty: fine
                 ",Asian,male\n"                    # no image name
                 "carl.jpg,Asian\n"                 # too few fields
                 "dora.jpg,,\n"                     # no group at all
                 "anna/1.jpg,White,male\n"          # listed twice
                 "\n")
    lab = G.read_groups_csv(p)
    assert lab.groupings == ["race", "gender"]
    assert lab.labels == {"anna/1.jpg": {"race": "Black", "gender": "female"}, "bob.jpg": {"race": "White"}}
    assert [n for n, _ in lab.bad] == ["line 4", "carl.jpg", "dora.jpg", "anna/1.jpg"]
    assert "listed twice" in lab.bad[-1][1] and "2 fields" in lab.bad[1][1]
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name;race\nx.jpg;White\n")
    with pytest.raises(G.GroupsError, match="header 'image,<grouping>"):
        G.read_groups_csv(bad)
    with pytest.raises(G.GroupsError, match="not_there.csv"):
        G.load_labels(str(tmp_path / "not_there.csv"), [])
    m = tmp_path / "manifest.csv"
    m.write_text("file,sha256,age,gender,race,split\na.jpg,0,1,0,0,val\nb.jpg,0,1,0,0,train\n")
    assert G.read_manifest(m, "val") == {"a.jpg"} and G.read_manifest(m) == {"a.jpg", "b.jpg"}
    with pytest.raises(G.GroupsError, match="'file' column"):
        G.read_manifest(bad)


def test_wilson_and_bootstrap_on_known_counts():
    # Wilson 95 % intervals as tabulated (Newcombe 1998, Brown-Cai-DasGupta 2001)
    assert G.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert G.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4) and G.wilson(0, 10)[0] == 0.0
    assert G.wilson(7, 7)[1] == 1.0
    assert G.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert G.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    p = G.proportion(3, 4)
    assert p["value"] == 0.75 and p["n"] == 4 and p["lo"] < 0.75 < p["hi"] and p["interval"] == "wilson"
    assert G.proportion(0, 0)["value"] is None and G.proportion(0, 0)["reason"]
    with pytest.raises(ValueError):
        G.wilson(5, 4)
    c = G.mean_ci([0.3] * 20)
    assert c["value"] == pytest.approx(0.3) and c["lo"] == pytest.approx(0.3) and c["hi"] == pytest.approx(0.3)
    coin = G.mean_ci([0.0, 1.0] * 50, seed=1)          # mean 0.5, standard error 0.05
    assert coin["value"] == 0.5 and 0.39 < coin["lo"] < 0.44 and 0.56 < coin["hi"] < 0.61
    assert G.mean_ci([0.0, 1.0] * 50, seed=1) == coin      # seeded: the same interval every time
    assert G.mean_ci([])["value"] is None


def test_group_measures_and_gaps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert G.top1_rate(x, x)["value"] == 1.0                   # a perfect round trip finds its own photo
    assert G.top1_rate(x, np.roll(x, 1, axis=0))["value"] == 0.0
    m = G.identity_margins(x, x)
    sxx = x @ x.T
    assert m[0] == pytest.approx(1 - (sxx[0].sum() - 1) / 5)
    same = np.repeat(x[:1], 4, axis=0)                          # one key collapses everybody to one face
    spread, rate = G.pair_spread(same, threshold=0.5)
    assert spread == pytest.approx(np.ones(4)) and rate == pytest.approx(np.ones(4))
    table = {"A": {"psr": G.proportion(99, 100), "recon_cos": G.mean_ci([0.5, 0.6])},
             "B": {"psr": G.proportion(96, 100), "recon_cos": G.mean_ci([0.3, 0.4])},
             "C": {"psr": G.proportion(98, 100)}}
    gp = G.gaps(table)
    assert gp["psr"]["best"] == "A" and gp["psr"]["worst"] == "B"
    assert gp["psr"]["ratio"] == pytest.approx(4.0)             # 4 % vs 1 % failures
    assert gp["psr"]["ratios"]["C"] == pytest.approx(2.0)
    assert gp["recon_cos"]["difference"] == pytest.approx(0.2)
    none = G.gaps({"A": {"far": G.proportion(0, 50)}, "B": {"far": G.proportion(2, 50)}})
    assert none["far"]["ratio"] is None and "no errors" in none["far"]["reason"]
    lines = G.gaps_lines("race", gp)
    assert any("psr: worst B 0.960, best A 0.990; error ratio worst/best 4.00x" in s for s in lines)
    assert G.gaps_lines("race", gp, ratios_only=True) == [s for s in lines if "ratio" in s]
    md = G.table_markdown(table, ["psr", "recon_cos"])
    assert md.splitlines()[0] == "| measure | A | B | C |"
    assert "| psr % | 99.0 [94.6, 99.8] (100) | 96.0 [90.2, 98.4] (100) | 98.0 [93.0, 99.4] (100) |" in md
    assert "| recon_cos | 0.550 [0.500, 0.600] (2) | 0.350 [0.300, 0.400] (2) | n/a |" in md
    assert G.gaps_lines("x", G.gaps({"A": {"psr": G.proportion(5, 5)}, "B": {"psr": G.proportion(3, 3)}})) == \
        ["x: psr: every group 1.000"]


def test_frechet_samples_equals_the_square_root_form():
    from faceanonymixer.eval.metrics import frechet_distance
    rng = np.random.default_rng(0)
    for n, m, d in ((5, 7, 32), (40, 40, 8), (6, 6, 512)):      # n < D (singular covariances) and n > D
        a, b = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.3
        assert G.frechet_samples(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-6, abs=1e-8)
    assert G.frechet_samples(a, a) == pytest.approx(0.0, abs=1e-8)


def test_plot_one_png(tmp_path):
    t = {"race": {"A": {"psr": G.proportion(9, 10)}, "B": {"psr": G.proportion(5, 10)}}}
    p = G.plot_groups(t, tmp_path / "g.png", "test")
    from PIL import Image
    assert p.is_file() and Image.open(p).size[0] > 100
    assert G.plot_groups({"race": {"A": {"psr": G.proportion(0, 0)}}}, tmp_path / "none.png") is None


# --- end to end: model-report --groups utkface on UTKFace-named synthetic files --------------------------------
@pytest.fixture(scope="module")
def utk(tmp_path_factory):
    import torch
    from faceanonymixer.models.encoders import build_encoder
    from faceanonymixer.models.io import save_model
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.registry import data_dir
    samples = data_dir() / "samples"
    if not (samples / "obama.jpg").is_file():
        pytest.skip(f"sample photos not installed at {samples} (run make install)")
    tmp = tmp_path_factory.mktemp("groups")
    root = tmp / "utk"
    root.mkdir()
    files = {"30_0_0_1.jpg.chip.jpg": "obama.jpg", "35_0_0_2.jpg.chip.jpg": "obama2.jpg",
             "41_1_0_3.jpg.chip.jpg": "biden.jpg", "50_0_1_4.jpg.chip.jpg": "obama3.jpg",
             "52_1_1_5.jpg.chip.jpg": "biden.jpg", "44_0_1_6.jpg.chip.jpg": "obama.jpg",
             "7_0_2_7.jpg.chip.jpg": "obama2.jpg",
             "9_1_2_8.jpg.chip.jpg": "biden.jpg",
             "60_0_1_9.jpg.chip.jpg": "obama2.jpg",   # not in the val split: never read
             "notutk.jpg": "obama.jpg", "25_3_0_b.jpg": "biden.jpg"}   # in the manifest, labels do not parse
    for name, src in files.items():
        (root / name).symlink_to(samples / src)
    (root / "33_0_0_unlisted.jpg").symlink_to(samples / "obama.jpg")      # not in the manifest at all
    man = tmp / "manifest.csv"
    man.write_text("file,split\n" + "".join(f"{n},{'train' if n.startswith('60_') else 'val'}\n" for n in files))
    torch.manual_seed(0)
    g = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16}).eval()
    g.compute_latent_avg(1000)
    gpath = save_model(g, tmp / "g.safetensors", g.config)
    enc_cfg = dict(n_styles=g.num_ws, style_dim=32, input_size=32, units=[1, 1, 1, 1], channels=[8, 8, 8, 8],
                   style_hidden=8)
    state = dict(build_encoder(enc_cfg).state_dict(), latent_avg=g.latent_avg.clone())
    epath = save_model(state, tmp / "e.safetensors", dict(arch="e4e", encoder=enc_cfg))
    return dict(tmp=tmp, root=root, man=man, gpath=gpath, epath=epath)


def test_model_report_per_group_end_to_end(utk, capsys):
    from faceanonymixer.cli import build_parser, main
    out = utk["tmp"] / "report"
    argv = ["model-report", "--generator", str(utk["gpath"]), "--encoder", str(utk["epath"]), "--out", str(out),
            "--groups", "utkface", "--group-data", str(utk["root"]), "--manifest", str(utk["man"]), "--split", "val",
            "--per-group", "3", "--groupings", "race,age", "--only-groups", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "model_report.json").read_text())
    sec = rep["sections"]["groups"]
    assert sec["status"] == "ok", sec.get("reason")
    assert set(rep["sections"]) == {"groups"}                  # --only-groups: nothing else measured
    d = sec["data"]
    assert d["n_files"] == 12 and d["n_in_manifest"] == 10     # the unlisted file and the train file are out
    assert d["labels"]["n_bad"] == 2 and {b["name"] for b in d["labels"]["bad"]} == {"notutk.jpg", "25_3_0_b.jpg"}
    # race: White 3 (all 13-64), Black 3 of 3 in val, Asian 2 (children): per-group cap 3; age from the same pool
    race = rep["groups"]["race"]
    assert set(race) == {"White", "Black", "Asian"} and set(rep["groups"]["age"]) == {"13-64", "under 13"}
    assert race["White"]["face_found"]["n"] == 3 and race["Asian"]["face_found"]["n"] == 2
    assert d["n_selected"] == 8 and sec["n_found"] + sec["n_refused"] == 8
    for grouping, table in rep["groups"].items():
        for grp, row in table.items():
            for m, v in row.items():
                assert G.base_measure(m) in G.MEASURES, m
                assert isinstance(v["n"], int) and v["interval"] in ("wilson", "bootstrap"), (grouping, grp, m)
                if v["value"] is None:
                    assert v["reason"], (grouping, grp, m)
                elif v["interval"] == "wilson":
                    assert v["lo"] <= v["value"] <= v["hi"] and v["n"] >= 1, (grp, m, v)
                else:   # a percentile bootstrap of a biased statistic (FD) need not contain the estimate
                    assert math.isfinite(v["value"]) and v["lo"] <= v["hi"], (grp, m, v)
            assert not any("sface" in m for m in row)           # never the loss network for a verdict
    w = race["White"]
    assert {"recon_top1[dlib-resnet]", "recon_cos[faceplugin-fr]", "identity_margin[dlib-resnet]",
            "recon_fd[dlib-resnet]", "psr[faceplugin-fr]", "key_spread_cos[dlib-resnet]",
            "key_match_rate[faceplugin-fr]", "gender_agreement", "age_agreement"} <= set(w)
    assert w["psr[dlib-resnet]"]["n"] <= w["face_found"]["n"]       # measured on the photos with a face
    ctx = sec["context_samples_under_one_key"]
    assert ctx["n"] == 8 and {"samples_spread_cos[dlib-resnet]", "mixes_spread_cos[faceplugin-fr]"} <= set(ctx)
    assert "photo_spread_cos[dlib-resnet]" in w and "Context without groups" in (out / "model_report.md").read_text()
    gp = sec["gaps"]["race"]
    assert "ratio" in gp["face_found"] and "difference" in gp["recon_cos[dlib-resnet]"]
    assert "error ratio worst/best" in printed and "race: face_found" in printed
    md = (out / "model_report.md").read_text()
    assert "## Per group" in md and "### race" in md and "| face_found % |" in md and "groups.png" in md
    assert (out / "groups.png").is_file() and "groups.png" in rep["images"]
    a0, a1 = build_parser().parse_args(argv), build_parser().parse_args(rep["command"].split()[1:])
    for k in ("groups", "group_data", "manifest", "split", "per_group", "groupings", "only_groups"):
        assert getattr(a0, k) == getattr(a1, k), k
