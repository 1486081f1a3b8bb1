"""eval/metrics.py against analytically known answers, and eval/protocols.py (pairs.txt, CSV, sampling)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW

from faceanonymixer.eval import metrics as M
from faceanonymixer.eval.protocols import (Pair, PairsFileError, limit_pairs, read_lfw_pairs, read_pairs,
                                           read_pairs_csv, sample_pairs, write_pairs_csv)

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels

stats = pytest.importorskip("scipy.stats")
optimize = pytest.importorskip("scipy.optimize")


def _gauss(mg, sg, mi, si, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    gen = rng.normal(mg, sg, n)
    imp = rng.normal(mi, si, n)
    return np.r_[gen, imp], np.r_[np.ones(n, bool), np.zeros(n, bool)]


# ---------------------------------------------------------------------------------------------------------
# metrics with known answers
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mg,sg,mi,si", [(2.0, 1.0, 0.0, 1.0), (3.0, 0.7, 0.5, 1.2)])
def test_gaussian_eer_auc_tar(mg, sg, mi, si):
    s, y = _gauss(mg, sg, mi, si)
    # truth: FAR(t) = 1 - Phi((t-mi)/si), FRR(t) = Phi((t-mg)/sg)
    far = lambda t: stats.norm.sf(t, mi, si)  # noqa: E731
    frr = lambda t: stats.norm.cdf(t, mg, sg)  # noqa: E731
    t_eer = optimize.brentq(lambda t: far(t) - frr(t), mi - 10, mg + 10)
    eer, thr = M.eer(s, y)
    assert eer == pytest.approx(far(t_eer), abs=3e-3)
    assert thr == pytest.approx(t_eer, abs=0.02)
    auc_true = stats.norm.cdf((mg - mi) / math.hypot(sg, si))
    assert M.auc(s, y) == pytest.approx(auc_true, abs=2e-3)
    rows = M.tar_at_far(s, y, [1e-3, 1e-2])
    for row in rows:
        t_true = stats.norm.isf(row["far_target"], mi, si)
        tar_true = stats.norm.sf(t_true, mg, sg)
        assert row["tar"] == pytest.approx(tar_true, abs=0.012), row
        assert row["far_achieved"] <= row["far_target"]
        assert row["far_achieved"] > 0.8 * row["far_target"]          # the threshold is not needlessly strict
        assert row["n_impostor"] == 200_000 and row["n_genuine"] == 200_000
        assert row["threshold"] == pytest.approx(t_true, abs=0.05)


def test_roc_shape_and_ties():
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    y = np.array([1, 1, 0, 0, 0], bool)
    fpr, tpr, thr = M.roc(s, y)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert fpr.tolist() == [0, 0, 1 / 3, 2 / 3, 1] and tpr.tolist() == [0, 0.5, 1, 1, 1]
    # all scores equal: chance level
    s = np.zeros(10)
    y = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    assert M.auc(s, y) == pytest.approx(0.5)
    assert M.eer(s, y)[0] == pytest.approx(0.5)


def test_perfect_and_inverted_separation():
    gen = np.linspace(0.6, 1.0, 50)
    imp = np.linspace(-0.2, 0.4, 70)
    s = np.r_[gen, imp]
    y = np.r_[np.ones(50, bool), np.zeros(70, bool)]
    e, t = M.eer(s, y)
    assert e == 0.0 and 0.4 < t <= 0.6
    assert M.auc(s, y) == 1.0
    kf = M.kfold_accuracy(s, y)
    assert kf["mean"] == 1.0 and kf["std"] == 0.0
    assert all(0.4 < th <= 0.6 for th in kf["thresholds"])
    row = M.tar_at_far(s, y, [0.1])[0]
    assert row["tar"] == 1.0 and row["far_achieved"] <= 0.1 and row["false_accepts"] == 7
    assert M.eer(-s, y)[0] == pytest.approx(1.0)
    assert M.auc(-s, y) == 0.0


def test_threshold_at_far_ties_and_limits():
    imp = np.array([1.0, 1.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1])
    # FAR <= 0.1 allows 1 false accept, but the top score is tied 3 times: must exclude all three
    t = M.threshold_at_far(imp, 0.1)
    assert t > 1.0 and (imp >= t).mean() == 0.0
    t = M.threshold_at_far(imp, 0.3)          # 3 accepts allowed: the tie fits exactly
    assert (imp >= t).sum() == 3 and t <= 1.0
    t = M.threshold_at_far(imp, 0.45)         # 4 allowed
    assert (imp >= t).sum() == 4
    assert M.fmr_threshold(imp, 0.45) == t
    assert M.threshold_at_far(imp, 1.0) == imp.min()


def test_tar_at_far_too_few_impostors():
    rng = np.random.default_rng(3)
    s = np.r_[rng.normal(1, 0.2, 300), rng.normal(0, 0.2, 261)]
    y = np.r_[np.ones(300, bool), np.zeros(261, bool)]
    row, ok = M.tar_at_far(s, y, [1e-3, 1e-2])
    assert math.isnan(row["tar"]) and math.isnan(row["threshold"])
    assert "261" in row["note"] and "1000" in row["note"] and row["n_impostor"] == 261
    assert not math.isnan(ok["tar"]) and ok["false_accepts"] <= 2 and ok["far_achieved"] <= 0.01


def test_kfold_accuracy_known_value():
    """Per fold: 30 genuine (3 of them scored low) and 30 impostor -> every fold 57/60 = 0.95."""
    rng = np.random.default_rng(5)
    s, y = [], []
    for _ in range(10):
        g = rng.uniform(0.6, 1.0, 30)
        g[:3] = rng.uniform(0.0, 0.4, 3)
        s += [g, rng.uniform(0.0, 0.4, 30)]
        y += [np.ones(30, bool), np.zeros(30, bool)]
    s, y = np.concatenate(s), np.concatenate(y)
    kf = M.kfold_accuracy(s, y, 10)
    assert kf["mean"] == pytest.approx(0.95) and kf["std"] == pytest.approx(0.0, abs=1e-12)
    assert len(kf["folds"]) == 10
    # failed pairs count as errors in their held-out fold and are ignored for thresholds
    valid = np.ones(len(s), bool)
    valid[np.nonzero(y)[0][3:9]] = False     # 6 correctly-scored genuine pairs of fold 0 failed
    kf2 = M.kfold_accuracy(np.where(valid, s, np.nan), y, 10, valid=valid)
    assert kf2["folds"][0] == pytest.approx(0.85) and kf2["folds"][1:] == pytest.approx([0.95] * 9)
    rep = M.verification_report(np.where(valid, s, np.nan), y, valid=valid)
    assert rep["n_failed"] == 6 and rep["accuracy"] < rep["accuracy_valid_only"]
    assert rep["n_pairs"] == 600 and rep["n_scored"] == 594


def test_kfold_lfw_fold_layout():
    """pairs.txt order (10 sets of 300 genuine then 300 impostor): class-wise contiguous folds = the 10 sets.
    A set whose pairs are all wrong shows up as exactly one fold at accuracy 0."""
    s, y = [], []
    for k in range(10):
        g, i = np.full(300, 0.9), np.full(300, 0.1)
        if k == 4:
            g, i = i.copy(), g.copy()
        s += [g, i]
        y += [np.ones(300, bool), np.zeros(300, bool)]
    kf = M.kfold_accuracy(np.concatenate(s), np.concatenate(y))
    assert kf["folds"][4] == 0.0 and all(a == 1.0 for j, a in enumerate(kf["folds"]) if j != 4)


def test_metric_input_checks():
    with pytest.raises(ValueError):
        M.roc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        M.eer([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError):
        M.kfold_accuracy(np.arange(10.0), np.r_[np.ones(5), np.zeros(5)])   # < 10 per class


# ---------------------------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------------------------
def test_read_lfw_pairs(tmp_path):
    text = "10\t300\nAaron_Peirsol\t1\t2\nAJ_Cook\t1\tMarsha_Thomason\t1\n\n  Abel_Pacheco 3 4\n"
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    pairs = read_lfw_pairs(p, tmp_path / "lfw")
    r = tmp_path / "lfw"
    assert pairs == [
        Pair(r / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", r / "Aaron_Peirsol/Aaron_Peirsol_0002.jpg", True),
        Pair(r / "AJ_Cook/AJ_Cook_0001.jpg", r / "Marsha_Thomason/Marsha_Thomason_0001.jpg", False),
        Pair(r / "Abel_Pacheco/Abel_Pacheco_0003.jpg", r / "Abel_Pacheco/Abel_Pacheco_0004.jpg", True),
    ]
    # without header, via the dispatcher
    p2 = tmp_path / "noheader.txt"
    p2.write_text("\n".join(text.splitlines()[1:]))
    assert read_pairs(p2, tmp_path / "lfw") == pairs
    bad = tmp_path / "bad.txt"
    bad.write_text("10 300\nAaron_Peirsol 1 x\n")
    with pytest.raises(PairsFileError, match=r"bad.txt:2"):
        read_lfw_pairs(bad, tmp_path)
    with pytest.raises(PairsFileError, match="not found"):
        read_pairs(tmp_path / "missing.txt", tmp_path)


def test_lfw_view2_file_parses():
    f = LFW / "pairs_view2_available.txt"
    if not f.is_file():
        pytest.skip(f"{f} not found")
    pairs = read_lfw_pairs(f, f.parent / "images")
    assert sum(p.same for p in pairs) == 2940 and sum(not p.same for p in pairs) == 261
    assert all(p.a.is_file() and p.b.is_file() for p in pairs[:50])


def test_pairs_csv_roundtrip(tmp_path):
    (tmp_path / "x").mkdir()
    csvp = tmp_path / "pairs.csv"
    csvp.write_text("img_a,img_b,same\nx/a.jpg,x/b.jpg,1\nx/a.jpg,/abs/c.jpg,false\n")
    pairs = read_pairs(csvp)
    assert pairs == [Pair(tmp_path / "x/a.jpg", tmp_path / "x/b.jpg", True),
                     Pair(tmp_path / "x/a.jpg", Path("/abs/c.jpg"), False)]
    out = write_pairs_csv(pairs, tmp_path / "out" / "p.csv", root=tmp_path)
    assert read_pairs_csv(out, root=tmp_path) == pairs
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(PairsFileError, match="img_a,img_b,same"):
        read_pairs_csv(bad)


def _identity_tree(root, counts):
    for k, n in enumerate(counts):
        d = root / f"person_{k:02d}"
        d.mkdir(parents=True)
        for j in range(n):
            (d / f"person_{k:02d}_{j + 1:04d}.jpg").write_bytes(b"")
    (root / "person_99").mkdir()     # empty folder: ignored


def test_sample_pairs_deterministic(tmp_path):
    _identity_tree(tmp_path, [1, 2, 3, 5, 1, 4, 2, 6, 1, 3])
    a = sample_pairs(tmp_path, 20, 25, seed=7)
    b = sample_pairs(tmp_path, 20, 25, seed=7)
    c = sample_pairs(tmp_path, 20, 25, seed=8)
    assert a == b and a != c
    assert sum(p.same for p in a) == 20 and sum(not p.same for p in a) == 25
    for p in a:
        assert (p.a.parent == p.b.parent) == p.same and p.a != p.b
    keys = {frozenset((p.a, p.b)) for p in a}
    assert len(keys) == len(a)                           # no repeated pair
    # genuine draws do not depend on how many impostors are asked for
    gen_a = [p for p in a if p.same]
    gen_d = [p for p in sample_pairs(tmp_path, 20, 3, seed=7) if p.same]
    assert set(gen_a) == set(gen_d)
    # balanced order: both classes present in the first half
    assert 0 < sum(p.same for p in a[:22]) < 22
    max_gen = 1 + 3 + 10 + 6 + 1 + 15 + 3                 # sum of C(n, 2)
    assert len([p for p in sample_pairs(tmp_path, max_gen, 0, seed=1)]) == max_gen
    with pytest.raises(PairsFileError, match="genuine"):
        sample_pairs(tmp_path, max_gen + 1, 0, seed=1)


def test_limit_pairs_keeps_ratio():
    pairs = [Pair(Path(f"a{k}"), Path(f"b{k}"), k % 3 != 0) for k in range(30)]   # 20 genuine, 10 impostor
    sub = limit_pairs(pairs, 9)
    assert len(sub) == 9 and sum(p.same for p in sub) == 6
    assert sub == [p for p in pairs if p in sub]          # input order kept
    assert limit_pairs(pairs, 100) == pairs
