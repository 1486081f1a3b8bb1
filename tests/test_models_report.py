"""``faceanonymixer model-report`` (eval/quality/): its metric functions (eval/metrics.py) against closed forms / an
independent reference, and the command end to end on a tiny random real Generator + encoder and the sample photos
(held-out people only)."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from faceanonymixer.cli import model_report as model_report_cli
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.eval import metrics as M
from faceanonymixer.eval.quality.generation import parse_ranges
from faceanonymixer.eval.quality.landmarks import pose_change
from faceanonymixer.train.data import person_split

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

TINY_G = {4: 32, 8: 32, 16: 16, 32: 16}


def test_ssim_matches_closed_form_and_gaussian_filter_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 40, 40, generator=g), 3, 1, 1)  # smooth-ish images
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-6)
    # constant images: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.6, 0.01 ** 2
    got = M.ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)
    # reference: the skimage recipe (scipy gaussian_filter, truncate 3.5 -> 11 taps, crop 5 px) per channel
    nd = pytest.importorskip("scipy.ndimage")

    def ref(u, v):
        f = lambda t: nd.gaussian_filter(t, 1.5, truncate=3.5)  # noqa: E731
        mu, mv = f(u), f(v)
        suu, svv, suv = f(u * u) - mu * mu, f(v * v) - mv * mv, f(u * v) - mu * mv
        m = ((2 * mu * mv + 1e-4) * (2 * suv + 9e-4)) / ((mu * mu + mv * mv + 1e-4) * (suu + svv + 9e-4))
        return m[5:-5, 5:-5].mean()

    xn, yn = x.double().numpy(), y.double().numpy()
    want = [np.mean([ref(xn[i, c], yn[i, c]) for c in range(3)]) for i in range(2)]
    assert np.allclose(M.ssim(x, y).numpy(), want, atol=1e-5)
    assert M.psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)).item() == pytest.approx(20.0, abs=1e-4)


def test_frechet_distance_closed_form_pose_change_and_ranges():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    d1, d2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    want = ((mu1 - mu2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum()
    assert M.frechet_from_stats(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))  # rotating both Gaussians changes nothing
    got = M.frechet_from_stats(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(want, rel=1e-6)
    a = rng.normal(size=(50, 8))  # n > dim and n < dim (singular covariance) both work
    assert abs(M.frechet_distance(a, a)) < 1e-6 and M.frechet_distance(a[:5], a[5:10] + 1) > 7
    lm = np.array([[[30., 40], [50, 40], [40, 50], [32, 60], [48, 60]]])
    assert pose_change(lm, lm + [2.0, 0.0])[0] == pytest.approx(0.1)  # 2 px at an inter-ocular of 20 px
    assert parse_ranges("1-3, 3-7,5") == [(1, 3), (3, 7), (5, 5)]
    with pytest.raises(ValueError):
        parse_ranges("4-2")


def _metrics(obj, path=""):
    """Every reported number (dicts with 'value' and 'n') in the JSON, with its path."""
    if isinstance(obj, dict):
        if "value" in obj and "n" in obj:
            yield path, obj
        for k, v in obj.items():
            yield from _metrics(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _metrics(v, f"{path}[{i}]")


def _check_numbers(report):
    found = list(_metrics(report))
    assert found
    for path, m in found:
        assert isinstance(m["n"], int) and m["n"] >= 0, path
        if m["value"] is None:
            assert isinstance(m.get("reason"), str) and m["reason"], f"{path}: null without a reason"
        else:
            assert math.isfinite(m["value"]), path
    return dict(found)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from faceanonymixer.models.encoders import build_encoder
    from faceanonymixer.models.io import save_model
    from faceanonymixer.models.stylegan2 import Generator
    from faceanonymixer.registry import data_dir
    samples = data_dir() / "samples"
    if not (samples / "obama.jpg").is_file():
        pytest.skip(f"sample photos not installed at {samples} (run make install)")
    tmp = tmp_path_factory.mktemp("model_report")
    # identity tree: Obama's photos = one held-out person, Biden = another, plus a training person never used
    val = [n for n in (f"Person_{k}" for k in range(200)) if person_split(n) == "val"][:2]
    train = next(n for n in (f"Person_{k}" for k in range(200)) if person_split(n) == "train")
    root = tmp / "people"
    for person, files in ((val[0], sorted(samples.glob("obama*.jpg"))), (val[1], [samples / "biden.jpg"]),
                          (train, [samples / "obama.jpg"])):
        (root / person).mkdir(parents=True)
        for f in files:
            (root / person / f"{person}_{f.stem}.jpg").symlink_to(f)
    torch.manual_seed(0)
    G = Generator(resolution=32, z_dim=32, w_dim=32, n_mlp=2, channels=TINY_G).eval()
    G.compute_latent_avg(1000)
    gpath = save_model(G, tmp / "g.safetensors", G.config)
    enc_cfg = dict(n_styles=G.num_ws, style_dim=32, input_size=32, units=[1, 1, 1, 1], channels=[8, 8, 8, 8],
                   style_hidden=8)
    state = dict(build_encoder(enc_cfg).state_dict(), latent_avg=G.latent_avg.clone())
    epath = save_model(state, tmp / "e.safetensors", dict(arch="e4e", encoder=enc_cfg))
    return dict(tmp=tmp, root=root, gpath=gpath, epath=epath, train=train, val=val)


def test_model_report_on_tiny_models(setup):
    from faceanonymixer.cli import build_parser, main
    s = setup
    out = s["tmp"] / "report"
    argv = ["model-report", "--generator", str(s["gpath"]), "--encoder", str(s["epath"]), "--data", str(s["root"]),
            "--n-samples", "8", "--n-real", "8", "--out", str(out), "--mix-layers", "1-3,3-6,2-9", "--threads", "1",
            "--refine-steps", "3", "--refine-n", "4"]
    assert main(argv) == 0
    rep = json.loads((out / "model_report.json").read_text())
    assert {"command", "config", "models", "real_data", "sections", "bars", "images"} <= set(rep)
    # the recorded command reproduces the same options
    a0, a1 = build_parser().parse_args(argv), build_parser().parse_args(rep["command"].split()[1:])
    for k in ("generator", "encoder", "data", "n_samples", "n_real", "out", "seed", "mix_layers", "refine_steps",
              "refine_n"):
        assert getattr(a0, k) == getattr(a1, k), k
    S = rep["sections"]
    assert {k: v["status"] for k, v in S.items()} == {k: "ok" for k in
                                                      ("real_data", "samples", "detection", "mixing", "fd_dlib",
                                                       "encoder", "encoder_refined")}, \
        {k: v.get("reason") for k, v in S.items()}
    nums = _check_numbers(rep)
    # counts follow the options; real photos only from the held-out people
    assert S["detection"]["detection_rate"]["n"] == 8 and S["detection"]["detection_rate"]["bar"] == ">= 0.9"
    files = rep["real_data"]["set_a"]["files"] + rep["real_data"]["set_b"]["files"]
    assert files and not any(f.startswith(s["train"]) for f in files)
    assert {f.split("/")[0] for f in rep["real_data"]["set_a"]["files"]}.isdisjoint(
        f.split("/")[0] for f in rep["real_data"]["set_b"]["files"])
    c = S["mixing"]["candidates"]
    assert set(c) == {"1-3", "3-6", "2-9"} and c["2-9"]["status"] == "skipped"  # 8 W+ layers: 2-9 does not fit
    assert c["1-3"]["middle"]["sface_cos"]["n"] == 8 and c["1-3"]["coarse"]["layers"] == "0"
    assert c["3-6"]["fine"]["layers"] == "7"
    every = S["mixing"]["context_pose_change_unrelated_samples"]          # the scale of the shift column
    assert S["mixing"]["context_sface_cos_unrelated_samples"]["n"] == 8
    assert every["n"] == 0 and every["value"] is None and "detected" in every["reason"]   # random G: no faces
    assert set(S["fd_dlib"]["rows"]) == {"generator", "dcgan", "real_floor", "real_at_generator_resolution"}
    enc = S["encoder"]
    n_a = rep["real_data"]["set_a"]["n_images"]
    assert enc["sface_cos"]["n"] == enc["psnr_db"]["n"] == enc["ssim"]["n"] == n_a >= 1
    assert -1 <= enc["sface_cos"]["value"] <= 1 and -1 <= enc["ssim"]["value"] < 1  # random encoder: not 1
    assert enc["faceplugin_cos"]["n"] == n_a and -1 <= enc["faceplugin_cos"]["value"] <= 1   # the independent check
    assert nums[".sections.encoder.psnr_db"]["value"] > 0
    ref = S["encoder_refined"]
    assert ref["steps"] == 3 and ref["psnr_db"]["n"] == min(4, n_a) and ref["psnr_db"]["value"] > 0
    for img in ("samples_grid.png", "style_mixing.png", "inversion.png", "inversion_refined.png"):
        assert (out / img).is_file() and img in rep["images"]
    from PIL import Image
    assert Image.open(out / "samples_grid.png").size == ((8 * 34 + 2) * 4,) * 2  # 32 px, 8x8, pad 2, x4
    md = (out / "model_report.md").read_text()
    assert "| what | value | n | bar | pass |" in md and rep["command"] in md and "FD-dlib" in md
    assert "| all | another sample altogether (reference) |" in md and "| n/a (no pairs detected" in md
    assert "encoder + 3-step refinement" in md


def test_model_report_skips_missing_models_with_reasons(setup):
    from faceanonymixer.cli import main
    s = setup
    out = s["tmp"] / "no_encoder"
    base = ["model-report", "--data", str(s["root"]), "--n-samples", "2", "--n-real", "2", "--threads", "1"]
    assert main(base + ["--generator", str(s["gpath"]), "--encoder", str(s["tmp"] / "missing.safetensors"),
                        "--out", str(out)]) == 0
    rep = json.loads((out / "model_report.json").read_text())
    assert rep["sections"]["encoder"]["status"] == "skipped" and "missing.safetensors" in rep["sections"]["encoder"]["reason"]
    assert rep["sections"]["detection"]["status"] == "ok"
    _check_numbers(rep)
    out2 = s["tmp"] / "no_generator"
    assert main(base + ["--generator", str(s["tmp"] / "nope.safetensors"), "--out", str(out2)]) == 0
    rep2 = json.loads((out2 / "model_report.json").read_text())
    S = rep2["sections"]
    assert all(S[k]["status"] == "skipped" and S[k]["reason"] for k in ("samples", "detection", "mixing", "encoder"))
    assert S["fd_dlib"]["status"] == "ok" and S["fd_dlib"]["rows"]["generator"]["value"] is None
    _check_numbers(rep2)
    assert "Not measured" in (out2 / "model_report.md").read_text()


def test_model_report_needs_data_flag_or_environment(monkeypatch, tmp_path):
    """No development-machine default: without --data and FACEANONYMIXER_LFW the command stops and names both."""
    monkeypatch.delenv("FACEANONYMIXER_LFW", raising=False)
    with pytest.raises(FaceAnonyMixerError, match="--data DIR.*FACEANONYMIXER_LFW"):
        model_report_cli.run(argparse.Namespace(data=None, out=str(tmp_path / "r"), threads=0))
    assert not (tmp_path / "r").exists()
