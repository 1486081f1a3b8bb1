"""End to end: `faceanonymixer evaluate` on a tiny identity-folder data set built from the installed sample photos
(Obama x3; Biden + his mirrored photo). Checks the report files, the metrics.json keys and the cache."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from faceanonymixer import cli, registry
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.eval import evaluate as ev
from faceanonymixer.eval.protection import variant_hash

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "eval.yaml"
# split=null: the tiny identity folders are not LFW, so no held-out-people filter.
FAST = ["--set", "threads=2", "--set", "n_impostor=1000", "--set", "grid_people=2", "--set", "split=null"]


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
    rc = cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tiny_data), "--out", str(out),
                   "--max-people", "5", "--seed", "3", "--set", "variants=[lowres,blur,pixelate]",
                   "--set", "main_variant=blur", "--set", "recognisers=[dlib-resnet,sface]", *FAST])
    assert rc == 0
    m = _check_report(out, ["dlib-resnet", "sface"])
    assert m["seed"] == 3 and m["main_variant"] == "blur"
    # key-less transforms are not revocable: k1-vs-k2 "mated" pairs are the same-key genuine pairs
    r = m["recognisers"]["sface"]["revocability"]
    assert r["match_rate"] == r["same_key_match_rate"]


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
    return {"generator": g.eval().requires_grad_(False), "inverter": E4EInverter(enc, g.latent_avg).eval().requires_grad_(False)}


def test_evaluate_method_paths_and_cache(tiny_data, tmp_path):
    """Keyed variants, both attacks, and the protected-image cache: a re-run with another blur strength recomputes
    'blur' only and resumes 'method' and 'naive' from the cache."""
    out = tmp_path / "r"
    over = [f"data={tiny_data}", f"out={out}", "variants=[method,naive,blur]", "recognisers=[sface]",
            "protect.optim.steps=2", "attacks.steps=2", "threads=2", "n_impostor=1000", "grid_people=2", "split=null"]
    models = _tiny_models()
    m = ev.evaluate(ev.load_config(CONFIG, over), models=models)
    _check_report(out, ["sface"], attacks=("avg", "optimise"))
    assert m["mixing"]["method"]["key_layers"] == [1, 2, 3] and m["loss_network"] == "sface"
    assert set(m["variants"]) == {"original", "method", "naive", "blur"}
    caches = sorted(p.name for p in (out / "cache").iterdir() if p.is_dir())
    assert len(caches) == 3
    stamp = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz") if "prep_" not in p.name}
    m2 = ev.evaluate(ev.load_config(CONFIG, over + ["blur_sigma=2.0"]), models=models)
    caches2 = sorted(p.name for p in (out / "cache").iterdir() if p.is_dir())
    new = set(caches2) - set(caches)
    assert len(new) == 1 and next(iter(new)).startswith("blur_")
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())      # nothing rewritten: method/naive resumed
    assert m2["timings_s"]["protect"] < m["timings_s"]["protect"]
    # same protected images -> same scores for the resumed variants
    a, b = m["variants"]["method"]["sface"], m2["variants"]["method"]["sface"]
    assert a["psr"] == b["psr"] and a["unlinkability"]["dsys"] == b["unlinkability"]["dsys"]
    # the method-level cache key also covers the method's settings
    base = ev.load_config(CONFIG, over)
    assert variant_hash(base, "method", 64) != variant_hash(ev.load_config(CONFIG, over + ["protect.optim.steps=3"]), "method", 64)
    assert variant_hash(base, "naive", 64) == variant_hash(ev.load_config(CONFIG, over + ["protect.optim.steps=3"]), "naive", 64)


def test_evaluate_with_embedded_models(tiny_data, tmp_path):
    """The whole command with the shipped default models (skips until they exist)."""
    for name in ("fam-stylegan2-64", "fam-e4e-64"):
        try:
            registry.locate(name)
        except FaceAnonyMixerError as e:
            pytest.skip(f"embedded model {name} not available yet: {str(e).splitlines()[0]}")
    out = tmp_path / "report"
    rc = cli.main(["evaluate", "--config", str(CONFIG), "--data", str(tiny_data), "--out", str(out), "--steps", "5",
                   "--set", "variants=[method,naive,blur]", "--set", "recognisers=[dlib-resnet,sface]",
                   "--set", "attacks.steps=5", *FAST])
    assert rc == 0
    _check_report(out, ["dlib-resnet", "sface"], attacks=("avg", "optimise"))


@pytest.mark.numerics   # determinism / recorded numbers: .ci/run reruns it on other CPUs' kernels
def test_attacks_known_answers():
    """avg attack = synthesis of the re-inverted code with the key layers set to latent_avg; the optimisation
    attack starts there (0 steps = the avg attack) and moves only those layers."""
    from faceanonymixer import fr
    from faceanonymixer.eval import attacks
    from faceanonymixer.mixing import MixingConfig, make_plan
    m = _tiny_models()
    g, inv = m["generator"], m["inverter"]
    plan = make_plan(g.num_ws, MixingConfig("code"), 64)
    layers = attacks.protected_layers(plan)
    assert layers == sorted(set(plan.key_layers) | set(plan.optimised_layers)) == [0, 1, 2, 3]
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ws = inv.encode(x)
        ws[:, layers] = g.latent_avg
        want = g.synthesis(ws, noise_mode="const").clamp(-1, 1)
    got = attacks.run_attack("avg", x, g, inv, layers, cfg=attacks.AttackConfig(batch_size=1))
    assert torch.allclose(got, want, atol=1e-5)
    sface = fr.get_recogniser("sface")
    w_key = torch.randn(2, g.num_ws, g.w_dim) * 0.1 + g.latent_avg
    cfg0 = attacks.AttackConfig(steps=0)
    assert torch.allclose(attacks.run_attack("optimise", x, g, inv, layers, w_key, sface, cfg0), want, atol=1e-5)
    moved = attacks.run_attack("optimise", x, g, inv, layers, w_key, sface, attacks.AttackConfig(steps=3, lr=0.1))
    assert moved.shape == want.shape and not torch.allclose(moved, want, atol=1e-3)
    with pytest.raises(ValueError):
        attacks.run_attack("optimise", x, g, inv, layers)          # needs the key code and a recogniser


def test_evaluate_separate_sessions(tiny_data, tmp_path):
    """sessions=separate protects every image alone (as enrol/verify do): one cache file per image and role, a
    cache key of its own, other images than the joint protocol; a bad value is refused."""
    import numpy as np
    over = [f"data={tiny_data}", "variants=[method]", "recognisers=[sface]", "attacks.names=[]",
            "protect.optim.steps=2", "threads=2", "n_impostor=1000", "grid_people=2", "split=null"]
    models = _tiny_models()
    joint = ev.evaluate(ev.load_config(CONFIG, over + [f"out={tmp_path / 'j'}"]), models=models)
    # Separate sessions give each image its own group with protect.optim.augment_copies (5) augmented copies: at
    # the default 8 sessions a batch that is 48 images of optimisation (6.8 GB peak); 2 sessions keep it at 12.
    sep = ev.evaluate(ev.load_config(CONFIG, over + [f"out={tmp_path / 's'}", "sessions=separate",
                                                     "people_per_batch=2"]), models=models)
    assert joint["sessions"] == "joint" and sep["sessions"] == "separate"
    (cj,) = [p for p in (tmp_path / "j" / "cache").iterdir() if p.name.startswith("method_")]
    (cs,) = [p for p in (tmp_path / "s" / "cache").iterdir() if p.name.startswith("method_")]
    assert cj.name != cs.name                                   # separate sessions hash differently
    obama = sorted(p.name for p in cs.glob("Barack_Obama.k1.*.npz"))
    assert obama == ["Barack_Obama.k1.s0.npz", "Barack_Obama.k1.s1.npz", "Barack_Obama.k1.s2.npz"]
    alone = [np.load(cs / n)["images"] for n in obama]
    assert all(a.shape[0] == 1 for a in alone)
    together = np.load(cj / "Barack_Obama.k1.npz")["images"]
    assert together.shape[0] == 3 and not np.array_equal(np.concatenate(alone), together)
    from faceanonymixer.config import ConfigError
    with pytest.raises(ConfigError, match="sessions"):
        ev.load_config(CONFIG, over + ["sessions=both"])


def test_evaluate_mixer_variant(tiny_data, tmp_path):
    """The 'mixer' variant (engine 'mixer', weights from protect.models.mixer) beside 'naive', scored and cached;
    without weights it is refused with a message naming the file."""
    import numpy as np
    from faceanonymixer import mixer as mx
    from faceanonymixer.mixing import make_plan
    models = _tiny_models()
    g = models["generator"]
    plan = make_plan(g.num_ws, ev.load_config(CONFIG, []).protect.mixing, 64, None)
    torch.manual_seed(5)
    m = mx.Mixer(g.num_ws, g.w_dim, g.z_dim, list(plan.optimised_layers), hidden=32, depth=2, alpha=2.0)
    weights = mx.export_mixer(m, tmp_path / "mixer.safetensors")
    over = [f"data={tiny_data}", "variants=[mixer,naive]", "main_variant=mixer", "recognisers=[sface]",
            "attacks.names=[]", "threads=2", "n_impostor=1000", "grid_people=2", "split=null",
            f"protect.models.mixer={weights}"]
    r = ev.evaluate(ev.load_config(CONFIG, over + [f"out={tmp_path / 'r'}"]), models=models)
    assert {"mixer", "naive"} <= set(r["variants"])
    cache = tmp_path / "r" / "cache"
    (cm,) = [p for p in cache.iterdir() if p.name.startswith("mixer_")]
    (cn,) = [p for p in cache.iterdir() if p.name.startswith("naive_")]
    a, b = np.load(cm / "Barack_Obama.k1.npz")["images"], np.load(cn / "Barack_Obama.k1.npz")["images"]
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() > 10
    with pytest.raises(FaceAnonyMixerError, match="nowhere.safetensors"):
        ev.evaluate(ev.load_config(CONFIG, over + [f"out={tmp_path / 'x'}",
                                                   f"protect.models.mixer={tmp_path / 'nowhere.safetensors'}"]),
                    models=models)
