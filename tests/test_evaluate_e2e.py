"""End to end: `faceanonymixer evaluate` on a tiny identity-folder data set built from the installed sample photos
(Obama x3; Biden + his mirrored photo). Checks the report files, the metrics.json keys and the cache."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceanonymixer import cli, registry
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.eval import evaluate as ev

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "eval.yaml"
FAST = ["--set", "threads=2", "--set", "n_impostor=1000", "--set", "grid_people=2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    samples = registry.data_dir() / "samples"
    if not (samples / "obama.jpg").is_file():
        pytest.skip(f"sample photos not found in {samples} (run `make install`)")
    root = tmp_path_factory.mktemp("tiny") / "ids"
    (root / "Barack_Obama").mkdir(parents=True)
    (root / "Joe_Biden").mkdir()
    for f in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        (root / "Barack_Obama" / f).write_bytes((samples / f).read_bytes())
    b = Image.open(samples / "biden.jpg").convert("RGB")
    b.save(root / "Joe_Biden" / "biden_0001.jpg", quality=95)
    b.transpose(Image.FLIP_LEFT_RIGHT).save(root / "Joe_Biden" / "biden_0002.jpg", quality=95)
    return root


def _check_report(out: Path, recognisers, attacks=()):
    for f in ("report.md", "report.html", "metrics.json", "scores.csv"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    assert {"config_hash", "seed", "counts", "recognisers"} <= set(m)
    assert m["counts"]["people"] == 2 and m["counts"]["images"] == 5
    assert m["counts"]["genuine"] == 3 + 1 and m["counts"]["impostor"] == 3 * 2
    for rec in recognisers:
        r = m["recognisers"][rec]
        assert isinstance(r["white_box"], bool)
        for side in ("original", "protected"):
            assert {"eer", "auc", "tar"} <= set(r["utility"][side]) and {"1e-2", "1e-3"} <= set(r["utility"][side]["tar"])
        assert {"1e-2", "1e-3"} <= set(r["psr"])
        assert {"match_rate", "far"} <= set(r["revocability"])
        assert "dsys" in r["unlinkability"] and "far" in r["stolen_key"]
        for a in attacks:
            assert "success_rate" in r["irreversibility"][a]
    assert m["recognisers"]["sface"]["white_box"] is True
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="plots/' not in html
    header = (out / "scores.csv").read_text().splitlines()[0]
    assert header == "variant,kind,item_a,item_b,recogniser,score"
    return m


def test_evaluate_command_keyless(tiny_data, tmp_path):
    """The CLI command itself, with the key-less variants (no generator needed)."""
    out = tmp_path / "report"
    t0 = time.time()
    rc = cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tiny_data), "--out", str(out),
                   "--max-people", "5", "--seed", "3", "--set", "variants=[lowres,blur,pixelate]",
                   "--set", "main_variant=blur", "--set", "recognisers=[dlib-resnet,sface]", *FAST])
    assert rc == 0
    m = _check_report(out, ["dlib-resnet", "sface"])
    assert m["seed"] == 3 and m["main_variant"] == "blur"
    # key-less transforms are not revocable: k1-vs-k2 "mated" pairs are the same-key genuine pairs
    r = m["recognisers"]["sface"]["revocability"]
    assert r["match_rate"] == r["same_key_match_rate"]
    assert time.time() - t0 < 120


def test_evaluate_rejects_bad_config(tiny_data, tmp_path):
    assert cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tiny_data), "--out", str(tmp_path),
                     "--set", "variants=[nope]"]) == 2
    assert cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tmp_path / "missing"),
                     "--out", str(tmp_path), "--set", "variants=[blur]", "--set", "main_variant=blur"]) == 2


def _tiny_models():
    """A small randomly initialised StyleGAN2 + e4e pair: real networks, enough to run every code path."""
    from faceanonymixer.models.e4e import E4EInverter, Encoder4Editing
    from faceanonymixer.models.stylegan2 import Generator
    torch.manual_seed(0)
    g = Generator(64, z_dim=64, w_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16, 64: 8})
    with torch.no_grad():
        g.latent_avg.copy_(g.mapping(torch.randn(256, 64)).mean(0))
    enc = Encoder4Editing(n_styles=10, input_size=64, units=(1, 1, 1, 1), channels=(8, 16, 16, 16), style_dim=64)
    return {"generator": g, "inverter": E4EInverter(enc, g.latent_avg)}


def test_evaluate_method_paths_and_cache(tiny_data, tmp_path):
    """Keyed variants, both attacks, and the protected-image cache (re-run resumes; a config change invalidates)."""
    out = tmp_path / "r"
    over = [f"data={tiny_data}", f"out={out}", "variants=[method,naive,blur]", "recognisers=[faceplugin-fr,sface]",
            "protect.optim.steps=2", "attacks.steps=2", "threads=2", "n_impostor=1000", "grid_people=2"]
    models = _tiny_models()
    m = ev.evaluate(ev.load_config(CONFIG, over), models=models)
    _check_report(out, ["faceplugin-fr", "sface"], attacks=("avg", "optimise"))
    assert m["mixing"]["method"]["key_layers"] == [1, 2, 3]
    caches = sorted(p.name for p in (out / "cache").iterdir() if p.is_dir())
    assert len(caches) == 3
    stamp = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz") if "prep_" not in p.name}
    ev.evaluate(ev.load_config(CONFIG, over), models=models)              # resume: nothing re-protected
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    over2 = [o if not o.startswith("protect.optim.steps") else "protect.optim.steps=3" for o in over]
    ev.evaluate(ev.load_config(CONFIG, over2), models=models)             # changed method: new cache for 'method' only
    caches2 = sorted(p.name for p in (out / "cache").iterdir() if p.is_dir())
    assert len(caches2) == 4 and len(set(caches2) - set(caches)) == 1
    assert [c for c in caches2 if c not in caches][0].startswith("method_")


def test_evaluate_with_embedded_models(tiny_data, tmp_path):
    """The whole command with the shipped default models (skips until they exist)."""
    for name in ("fam-stylegan2-64", "fam-e4e-64"):
        try:
            registry.locate(name)
        except FaceAnonyMixerError as e:
            pytest.skip(f"embedded model {name} not available yet: {str(e).splitlines()[0]}")
    out = tmp_path / "report"
    t0 = time.time()
    rc = cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tiny_data), "--out", str(out), "--steps", "5",
                   "--set", "variants=[method,naive,blur]", "--set", "recognisers=[dlib-resnet,sface]",
                   "--set", "attacks.steps=5", *FAST])
    assert rc == 0
    _check_report(out, ["dlib-resnet", "sface"], attacks=("avg", "optimise"))
    assert time.time() - t0 < 120
