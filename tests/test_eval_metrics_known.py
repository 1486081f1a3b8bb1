"""Known answers for the evaluation suite's bookkeeping: verification numbers on analytic Gaussians, D<->sys
extremes, PSR thresholds, revocability/stolen-key rates, deterministic pairs, and the report writer."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.eval import baselines, dataset, report, scoring
from faceanonymixer.eval import evaluate as ev
from faceanonymixer.eval import metrics as M
from faceanonymixer.eval.attacks import ATTACKS
from faceanonymixer.eval.protection import eval_key
from faceanonymixer.eval.report import ORIGINAL, ScoreSet

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _synthetic(n_imp=20000, n_gen=4000, seed=0):
    """Original: genuine N(2,1), impostor N(0,1). 'prot': genuine N(2,1), impostor N(0,1) too, orig-vs-protected
    scores at fixed values, mated = impostor-like, stolen-key = impostor-like."""
    rng = np.random.default_rng(seed)
    s = ScoreSet()
    names = lambda n, p: [f"{p}{i}" for i in range(n)]  # noqa: E731
    for v in (ORIGINAL, "prot"):
        s.add(v, "genuine", "r", names(n_gen, "a"), names(n_gen, "b"), rng.normal(2, 1, n_gen))
        s.add(v, "impostor", "r", names(n_imp, "a"), names(n_imp, "b"), rng.normal(0, 1, n_imp))
    s.add("prot", "mated", "r", names(n_gen, "a"), names(n_gen, "b"), rng.normal(0, 1, n_gen))
    s.add("prot", "nonmated", "r", names(n_imp, "a"), names(n_imp, "b"), rng.normal(0, 1, n_imp))
    s.add("prot", "stolen_key", "r", names(n_gen, "a"), names(n_gen, "b"), rng.normal(0, 1, n_gen))
    return s


def test_verification_matches_analytic_gaussians():
    s = _synthetic()
    v = report.verification(s.get(ORIGINAL, "genuine", "r"), s.get(ORIGINAL, "impostor", "r"))
    # two unit Gaussians 2 apart: EER = Phi(-1), AUC = Phi(2/sqrt(2)), TAR@FAR f = 1 - Phi(z_{1-f} - 2)
    assert v["eer"] == pytest.approx(_phi(-1), abs=0.01)
    assert v["auc"] == pytest.approx(_phi(2 / math.sqrt(2)), abs=0.01)
    assert v["tar"]["1e-2"] == pytest.approx(1 - _phi(2.3263 - 2), abs=0.03)
    assert v["tar"]["1e-1"] == pytest.approx(1 - _phi(1.2816 - 2), abs=0.03)
    assert "1e-4" in v["tar"]                      # 20000 impostors resolve 1e-4 ...
    v_small = report.verification(s.get(ORIGINAL, "genuine", "r"), s.get(ORIGINAL, "impostor", "r")[:500])
    assert "1e-4" not in v_small["tar"] and v_small["tar"]["1e-3"] is None and "1e-3" in v_small["tar_notes"]
    assert v["accuracy_10fold"]["mean"] > 0.8


def test_psr_thresholds_on_clean_impostors():
    s = _synthetic()
    imp = s.get(ORIGINAL, "impostor", "r")
    t2, t3 = report.fmr_threshold(imp, 1e-2), report.fmr_threshold(imp, 1e-3)
    assert np.mean(imp >= t2) <= 1e-2 and np.mean(imp >= t3) <= 1e-3
    assert t2 == pytest.approx(2.326, abs=0.08) and t3 == pytest.approx(3.09, abs=0.15)
    # orig-vs-protected scores: 40% far below both thresholds, 30% between t2 and t3, 30% above t3 (all match)
    same = np.r_[np.full(40, -1.0), np.full(30, (t2 + t3) / 2), np.full(30, t3 + 1)]
    s.add("prot", "orig_prot_same", "r", [str(i) for i in range(100)], [str(i) for i in range(100)], same)
    s.add("prot", "orig_prot_other", "r", ["x"] * 10, ["y"] * 10, np.full(10, -1.0))
    m = report.summarise_variant(s, "prot", "r", operating_fmr=1e-2)
    assert m["psr"]["1e-2"] == pytest.approx(0.40)     # only scores < t2 count as protected at FMR 1e-2
    assert m["psr"]["1e-3"] == pytest.approx(0.70)     # stricter FMR -> higher threshold -> more protected
    assert m["psr"]["other_image"]["1e-3"] == 1.0
    assert m["psr"]["thresholds"]["1e-3"] == t3
    # revocability: mated ~ impostors -> match rate ~ FAR at the operating threshold (1e-2)
    r = m["revocability"]
    assert r["far"] <= 0.01 and abs(r["match_rate"] - 0.01) < 0.01 and r["same_key_match_rate"] > 0.3
    assert r["match_rate_ci95"][0] <= 0.01 <= r["match_rate_ci95"][1] + 0.005
    assert r["indistinguishable_from_far"] is True
    assert abs(m["stolen_key"]["far"] - 0.01) < 0.01 and m["stolen_key"]["n"] == 4000
    assert m["unlinkability"]["dsys"] < 0.05              # mated == non-mated distribution
    assert m["unlinkability"]["original_baseline_dsys"] > 0.5


def test_dsys_extremes_through_summarise():
    rng = np.random.default_rng(5)
    s = ScoreSet()
    for v in (ORIGINAL, "linkable"):
        s.add(v, "genuine", "r", ["a"] * 2000, ["b"] * 2000, rng.uniform(0.7, 1.0, 2000))
        s.add(v, "impostor", "r", ["a"] * 2000, ["b"] * 2000, rng.uniform(-0.3, 0.3, 2000))
    s.add("linkable", "mated", "r", ["a"] * 2000, ["b"] * 2000, rng.uniform(0.7, 1.0, 2000))
    s.add("linkable", "nonmated", "r", ["a"] * 2000, ["b"] * 2000, rng.uniform(-0.3, 0.3, 2000))
    m = report.summarise_variant(s, "linkable", "r", 1e-2)
    assert m["unlinkability"]["dsys"] > 0.95 and m["unlinkability"]["original_baseline_dsys"] > 0.95
    assert m["revocability"]["match_rate"] == 1.0      # not revocable: the old template still matches
    assert m["revocability"]["indistinguishable_from_far"] is False


def _tree(tmp_path, n_people=6, n_img=4):
    root = tmp_path / "ids"
    for p in range(n_people):
        d = root / f"P{p:02d}"
        d.mkdir(parents=True)
        for i in range(n_img if p != 0 else 1):  # P00 has a single image: never selected with min_images=2
            (d / f"P{p:02d}_{i:04d}.jpg").write_bytes(b"x")
    return root


def test_pairs_are_deterministic(tmp_path):
    root = _tree(tmp_path)
    a = dataset.select_dataset(root, 4, 2, 3, seed=7)
    b = dataset.select_dataset(root, 4, 2, 3, seed=7)
    c = dataset.select_dataset(root, 4, 2, 3, seed=8)
    assert a.items == b.items and "P00" not in a.people and len(a.people) == 4
    assert all(np.bincount(a.person_of) == 3)
    assert a.items != c.items
    pa = dataset.make_pairs(a, n_impostor=20, stolen_images=2, seed=7)
    pb = dataset.make_pairs(b, n_impostor=20, stolen_images=2, seed=7)
    for f in ("genuine", "impostor", "stolen", "stolen_victim"):
        assert np.array_equal(getattr(pa, f), getattr(pb, f)), f
    po = a.person_of
    assert len(pa.genuine) == 4 * 3 and all(po[x] == po[y] and x < y for x, y in pa.genuine)
    assert len(pa.impostor) == 20 and len({tuple(p) for p in pa.impostor.tolist()}) == 20
    assert all(po[x] != po[y] for x, y in pa.impostor)
    # stolen key: victim's own items vs another person's items; 3 enrolled x 2 stolen per victim
    assert len(pa.stolen) == 4 * 3 * 2
    assert all(po[x] == v and po[y] != v for (x, y), v in zip(pa.stolen, pa.stolen_victim))
    # all cross pairs when fewer than asked
    pall = dataset.make_pairs(a, n_impostor=10 ** 6, stolen_images=1, seed=7)
    assert len(pall.impostor) == (12 * 11) // 2 - 12
    # evaluation keys: deterministic, distinct per person and role
    k = eval_key(7, "P01", "k1")
    assert k == eval_key(7, "P01", "k1") and k != eval_key(7, "P01", "k2") and k != eval_key(8, "P01", "k1")


def test_baselines():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(baselines.blur(x, 0), x)
    b = baselines.blur(x, 2.0)
    assert b.shape == x.shape and b.std() < x.std()
    const = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(baselines.blur(const, 3.0), const, atol=1e-6)   # a normalised kernel keeps constants
    p = baselines.pixelate(x, 4)
    assert p.shape == x.shape
    assert torch.allclose(p[..., :4, :4], x[..., :4, :4].mean(dim=(-1, -2), keepdim=True).expand(-1, -1, 4, 4), atol=1e-6)
    with pytest.raises(ValueError):
        baselines.apply("nope", x, 1)


def test_frechet_and_pose():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 4))
    assert M.frechet_distance(a, rng.normal(0, 1, (4000, 4))) < 0.05
    # N(0,I) vs N(m,4I): |m|^2 + tr(I) + tr(4I) - 2 tr(2I) = |m|^2 + 4
    assert M.frechet_distance(a, rng.normal(1, 2, (4000, 4))) == pytest.approx(4 + 4, rel=0.1)
    lm = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)
    assert np.allclose(scoring.pose_proxies(lm), [0.0, 0.0, 0.5])
    th = math.radians(10)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    assert scoring.pose_proxies(lm @ R.T)[0] == pytest.approx(10.0)


def test_scores_roundtrip_and_report_writer(tmp_path):
    s = _synthetic(n_imp=3000, n_gen=300)
    s.add("prot", "orig_prot_same", "r", ["o"] * 50, ["p"] * 50, np.linspace(-1, 1, 50))
    s.add("prot", "orig_prot_other", "r", ["o"] * 50, ["p"] * 50, np.linspace(-1, 1, 50))
    s.add("prot", "attack:avg", "r", ["o"] * 50, ["p"] * 50, np.linspace(-1, 1, 50))
    m = report.summarise(s, ["r"], ["r"], [ORIGINAL, "prot"], "prot", 1e-2, attacks=["avg"],
                         extra={"quality": {"fid": None}, "attributes": {}}, config_hash="abc", seed=3,
                         counts={"people": 2})
    rows = [{"label": "p", "images": [np.zeros((8, 8, 3), np.uint8)] * 5}]
    paths = report.write_report(tmp_path, m, s, rows, ["a", "b", "c", "d", "e"], config={"x": 1})
    for k in ("metrics", "scores", "md", "html"):
        assert paths[k].is_file() and paths[k].stat().st_size > 0
    j = json.loads(paths["metrics"].read_text())
    r = j["recognisers"]["r"]
    assert j["config_hash"] == "abc" and j["seed"] == 3 and r["white_box"] is True
    assert set(r["utility"]["original"]) >= {"eer", "auc", "tar"} and set(r["utility"]["protected"]["tar"]) >= {"1e-2", "1e-3"}
    assert set(r["psr"]) >= {"1e-2", "1e-3"} and set(r["revocability"]) >= {"match_rate", "far"}
    assert "dsys" in r["unlinkability"] and "success_rate" in r["irreversibility"]["avg"] and "far" in r["stolen_key"]
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 5 and "src=\"plots/" not in html
    back = ScoreSet.from_csv(paths["scores"])
    assert len(back) == len(s)
    assert np.allclose(back.get("prot", "impostor", "r"), s.get("prot", "impostor", "r"))
    # recompute a metric from scores.csv alone
    assert report.summarise_variant(back, "prot", "r", 1e-2)["psr"]["1e-3"] == pytest.approx(r["psr"]["1e-3"])


def test_attack_selection_empty_list_means_none():
    cfg = Path(__file__).resolve().parents[1] / "configs" / "eval.yaml"
    assert ev.selected_attacks(ev.load_config(cfg, ["attacks.names=[]"])) == []
    assert ev.selected_attacks(ev.load_config(cfg, ["attacks.names=null"])) == list(ATTACKS)
    assert ev.selected_attacks(ev.load_config(cfg, ["attacks.names=[avg]"])) == ["avg"]


def _frechet_as_evaluate_computed_it(a, b):
    """The embedding-space Fréchet distance exactly as eval/evaluate.py had it before metrics.py became its home."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_hand_made_value_and_both_reports_numbers():
    # 1-D: a = {0, 2} -> mean 1, variance 2; b = {3, 5, 7} -> mean 5, variance 4 (unbiased):
    # (1 - 5)^2 + 2 + 4 - 2 sqrt(2 * 4) = 22 - 4 sqrt(2)
    a, b = np.array([[0.0], [2.0]]), np.array([[3.0], [5.0], [7.0]])
    assert M.frechet_distance(a, b) == pytest.approx(22 - 4 * math.sqrt(2), rel=1e-12)
    assert M.frechet_distance(a, b, upcast=False) == pytest.approx(22 - 4 * math.sqrt(2), rel=1e-12)
    # 2-D, independent axes: the per-axis 1-D values add up
    a2, b2 = np.array([[0.0, 0], [2, 1]]), np.array([[3.0, 0], [5, 2], [7, 4]])
    want = 22 - 4 * math.sqrt(2) + (0.5 - 2) ** 2 + 0.5 + 4 - 2 * math.sqrt(0.5 * 4)
    assert M.frechet_distance(a2[:, :1], b2[:, :1]) + M.frechet_distance(a2[:, 1:], b2[:, 1:]) == pytest.approx(want)
    # `evaluate` (float32 embeddings, means in float32) keeps its numbers bit for bit; the model report's float64
    # path differs from it only in rounding
    rng = np.random.default_rng(3)
    for n in (3, 40, 300):
        ea = rng.normal(size=(n, 128)).astype(np.float32)
        eb = (rng.normal(size=(50, 128)) + 0.1).astype(np.float32)
        old = _frechet_as_evaluate_computed_it(ea, eb)
        assert M.frechet_distance(ea, eb, upcast=False) == old
        assert M.frechet_distance(ea, eb) == pytest.approx(old, rel=1e-6)


def test_data_folder_from_flag_or_environment(monkeypatch, tmp_path):
    """No development-machine default: --data (or the config's data), else $FACEANONYMIXER_LFW/images, else an
    error that names both; the environment beats the config file, an explicit --data beats both."""
    monkeypatch.delenv(dataset.DATA_ENV, raising=False)
    with pytest.raises(FaceAnonyMixerError, match="--data DIR.*FACEANONYMIXER_LFW"):
        dataset.data_root(None)
    assert dataset.data_root("x/y") == "x/y"
    cfg = ev.load_config(None, [f"out={tmp_path / 'r'}", "variants=[blur]", "main_variant=blur"])
    assert cfg.data is None
    with pytest.raises(FaceAnonyMixerError, match="--data DIR.*FACEANONYMIXER_LFW"):
        ev.evaluate(cfg)
    monkeypatch.setenv(dataset.DATA_ENV, str(tmp_path / "from_env"))
    assert dataset.data_root(None) == str(tmp_path / "from_env" / "images")
    parser = argparse.ArgumentParser()
    from faceanonymixer.cli import evaluate as ev_cli
    ev_cli.add_arguments(parser)
    config = Path(__file__).resolve().parents[1] / "configs" / "eval.yaml"
    assert ev_cli.config_from_args(parser.parse_args(["--config", str(config)])).data == str(tmp_path / "from_env" / "images")
    assert ev_cli.config_from_args(parser.parse_args(["--config", str(config), "--data", "d"])).data == "d"
    assert ev_cli.config_from_args(parser.parse_args(["--config", str(config), "--set", "data=s"])).data == "s"
