"""Every metric of the evaluation suites, one home: verification metrics on similarity scores, image similarity
(SSIM, PSNR) and the Fréchet distance between Gaussians fitted to feature sets.

Scores: higher = more similar; a pair is accepted when score >= threshold. Labels: 1 (True) = genuine / mated
pair, 0 (False) = impostor / non-mated pair. All functions take plain arrays (images: torch tensors) and are
deterministic; none needs scipy or sklearn.

* ``roc`` (fpr, tpr, thresholds), ``auc`` (trapezoid), ``eer`` (linear interpolation of the FPR/FNR crossing,
  never a root finder that can raise on a degenerate ROC),
* ``threshold_at_far`` / ``fmr_threshold`` (threshold chosen on impostor scores so that FAR <= target),
  ``tar_at_far`` (achieved FAR and the number of impostors reported; NaN with a note when there are too few),
* ``kfold_accuracy``: LFW protocol (best threshold on 9 folds, accuracy on the held-out one; mean and std),
* ``verification_report``: all of the above in one JSON-ready dict,
* ``ssim`` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid positions, K1=0.01, K2=0.03), ``psnr``,
* ``frechet_distance`` / ``frechet_from_stats``: ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN/inf; drop or mark failed pairs (valid=) instead")
    return s, y


def split_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(genuine scores, impostor scores)."""
    s, y = _arrays(scores, labels)
    return s[y], s[~y]


def roc(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: (fpr, tpr, thresholds), thresholds decreasing, starting at (0, 0) with threshold +inf.
    Point i accepts every pair with score >= thresholds[i]; every distinct score is a point (no thinning)."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both genuine and impostor pairs (got {n_pos} genuine, {n_neg} impostor)")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]   # last index of each group of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thr = np.r_[np.inf, s[last]]
    return fpr, tpr, thr


def auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoid rule; ties count one half)."""
    fpr, tpr, _ = roc(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and its threshold.

    FPR rises and FNR = 1 - TPR falls along the ROC; the crossing is found between the last point with
    FPR < FNR and the first with FPR >= FNR and linearly interpolated (EER and threshold alike). Robust to
    perfect separation (EER 0) and to steps/ties (no brentq)."""
    fpr, tpr, thr = roc(scores, labels)
    fnr = 1.0 - tpr
    d = fpr - fnr                        # increasing from -1 (at +inf) to +1
    i = int(np.argmax(d >= 0))           # first index with fpr >= fnr (exists: d[-1] = 1)
    if i == 0:
        return 0.0, float(thr[1]) if len(thr) > 1 else float("nan")
    d0, d1 = d[i - 1], d[i]
    t = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    e = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])          # = fnr at the crossing
    t_lo = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    threshold = t_lo + t * (thr[i] - t_lo)
    return float(e), float(threshold)


def threshold_at_far(impostor_scores, far: float) -> float:
    """Smallest threshold t with FAR(t) = #(impostor >= t) / n <= far (maximises TAR under that constraint).

    With fewer than 1/far impostors this is just above the highest impostor score (FAR = 0): valid but
    unresolved; ``tar_at_far`` reports NaN in that case."""
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())[::-1]
    if imp.size == 0:
        raise ValueError("threshold_at_far needs at least one impostor score")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    k = int(math.floor(far * imp.size + 1e-9))      # false accepts allowed
    if k >= imp.size:
        return float(imp[-1])                       # everything may be accepted
    # accepting >= nextafter(imp[k]) accepts at most the k scores above imp[k] (ties at imp[k] excluded)
    return float(np.nextafter(imp[k], np.inf))


def fmr_threshold(impostor_scores, fmr: float) -> float:
    """ISO/IEC 19795 name for ``threshold_at_far``: decision threshold at a false-match rate <= fmr."""
    return threshold_at_far(impostor_scores, fmr)


def tar_at_far(scores, labels, fars: Sequence[float] = (1e-3,)) -> list[dict]:
    """TAR at each target FAR. Each entry: far_target, tar, threshold, far_achieved (<= target), n_genuine,
    n_impostor, false_accepts, note. With fewer than ceil(1/far) impostor pairs the FAR cannot be resolved:
    tar/threshold are NaN and ``note`` says how many impostors are needed."""
    gen, imp = split_scores(scores, labels)
    out = []
    for far in fars:
        far = float(far)
        row = dict(far_target=far, tar=float("nan"), threshold=float("nan"), far_achieved=float("nan"),
                   n_genuine=int(gen.size), n_impostor=int(imp.size), false_accepts=None, note="")
        need = int(math.ceil(1.0 / far - 1e-9)) if far > 0 else None
        if gen.size == 0 or imp.size == 0:
            row["note"] = f"needs genuine and impostor pairs (got {gen.size} genuine, {imp.size} impostor)"
        elif need is None or imp.size < need:
            row["note"] = (f"too few impostor pairs for FAR={far:g}: have {imp.size}, need at least "
                           f"{need if need is not None else 'infinitely many'}")
        else:
            t = threshold_at_far(imp, far)
            fa = int((imp >= t).sum())
            row.update(tar=float((gen >= t).mean()), threshold=t, far_achieved=fa / imp.size, false_accepts=fa)
            if imp.size < 10 * need:
                row["note"] = f"only {imp.size} impostor pairs: FAR={far:g} rests on {fa} false accepts"
        out.append(row)
    return out


def _best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising accuracy of (score >= t) == y; candidates are midpoints between distinct scores
    (plus just below the minimum and above the maximum). Ties go to the first (highest) threshold."""
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    uniq = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp = np.r_[0, np.cumsum(yy)[uniq]]              # accepting the first k groups
    fp = np.r_[0, np.cumsum(~yy)[uniq]]
    n_neg = int((~yy).sum())
    correct = tp + (n_neg - fp)
    k = int(np.argmax(correct))
    vals = ss[uniq]                                  # distinct scores, decreasing
    if k == 0:
        return float(np.nextafter(vals[0], np.inf))
    if k == len(vals):
        return float(vals[-1])
    return float((vals[k - 1] + vals[k]) / 2.0)


def kfold_accuracy(scores, labels, n_folds: int = 10, valid=None) -> dict:
    """LFW-style accuracy: for each fold, the best threshold on the other folds, accuracy on the held-out fold.

    Folds are contiguous *within each class* (the i-th tenth of the genuine pairs and of the impostor pairs, in
    input order), which for a standard LFW pairs.txt is exactly its 10 sets and stays balanced for sorted CSVs.
    ``valid`` (bool per pair): pairs marked False (e.g. a face not detected) are left out of threshold selection
    and counted as *errors* in their held-out fold. Returns mean, std (population, as insightface), per-fold
    accuracies and thresholds."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    v = np.ones_like(y) if valid is None else np.asarray(valid).ravel().astype(bool)
    if not (s.shape == y.shape == v.shape):
        raise ValueError("scores, labels and valid differ in length")
    if np.any(~np.isfinite(s[v])):
        raise ValueError("valid scores contain NaN/inf")
    fold = np.empty(len(s), dtype=np.int64)
    for cls in (True, False):
        idx = np.nonzero(y == cls)[0]
        if len(idx) < n_folds:
            raise ValueError(f"{n_folds}-fold accuracy needs at least {n_folds} pairs of each class "
                             f"(got {len(idx)} {'genuine' if cls else 'impostor'})")
        fold[idx] = np.arange(len(idx)) * n_folds // len(idx)
    accs, thrs = [], []
    for k in range(n_folds):
        train = (fold != k) & v
        test = fold == k
        t = _best_threshold(s[train], y[train])
        ok = (s[test] >= t) == y[test]
        ok &= v[test]                                # failed pairs are errors
        accs.append(float(ok.mean()))
        thrs.append(t)
    accs = np.array(accs)
    return dict(mean=float(accs.mean()), std=float(accs.std()), folds=accs.tolist(), thresholds=thrs,
                n_folds=n_folds)


def accuracy_at_threshold(scores, labels, threshold: float) -> float:
    s, y = _arrays(scores, labels)
    return float(((s >= threshold) == y).mean())


def verification_report(scores, labels, valid=None, fars: Sequence[float] = (1e-3,), n_folds: int = 10) -> dict:
    """Everything in one JSON-ready dict. Threshold-free metrics (EER, AUC, TAR@FAR) use the valid pairs only;
    10-fold accuracy counts invalid pairs as errors (``accuracy``) and is also given without them
    (``accuracy_valid_only``)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    v = np.ones_like(y) if valid is None else np.asarray(valid).ravel().astype(bool)
    sv, yv = s[v], y[v]
    kf = kfold_accuracy(s, y, n_folds, valid=v)
    kf_valid = kfold_accuracy(sv, yv, n_folds)
    e, et = eer(sv, yv)
    gen, imp = sv[yv], sv[~yv]
    return dict(
        n_pairs=int(len(s)), n_genuine=int(y.sum()), n_impostor=int((~y).sum()),
        n_scored=int(v.sum()), n_failed=int((~v).sum()),
        accuracy=kf["mean"], accuracy_std=kf["std"], accuracy_folds=kf["folds"],
        accuracy_valid_only=kf_valid["mean"], accuracy_valid_only_std=kf_valid["std"],
        threshold_mean=float(np.mean(kf["thresholds"])),
        eer=e, eer_threshold=et, auc=auc(sv, yv),
        tar_at_far=tar_at_far(sv, yv, fars),
        genuine_mean=float(gen.mean()), impostor_mean=float(imp.mean()),
        genuine_std=float(gen.std()), impostor_std=float(imp.std()),
    )


# --- image similarity -----------------------------------------------------------------------------------------
def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[size,size] float64 Gaussian kernel summing to 1."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image: x, y [N,C,H,W] in [0, data_range] -> [N]. 11x11 Gaussian window (sigma 1.5), computed per
    channel and averaged over channels and all 'valid' window positions (no padding); K1=0.01, K2=0.03."""
    assert x.shape == y.shape and x.ndim == 4 and min(x.shape[2:]) >= 11, (tuple(x.shape), tuple(y.shape))
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = gaussian_window().to(x.device)[None, None].repeat(c, 1, 1, 1)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3)).float()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image: x, y [N,C,H,W] in [0, data_range] -> [N] (MSE floored at 1e-10: 100 dB cap)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


# --- Fréchet distance -----------------------------------------------------------------------------------------
def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); tr sqrt(S1 S2) via the symmetric S1^(1/2) S2 S1^(1/2)
    (same eigenvalues), so singular covariances (n <= dim) are fine. Covariances in float64; the means keep a
    float32 dtype when given one (see ``frechet_distance(upcast=False)``), anything else becomes float64."""
    mu1, mu2 = (m if isinstance(m, np.ndarray) and m.dtype == np.float32 else np.asarray(m, np.float64)
                for m in (mu1, mu2))
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    ev, evec = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (evec * np.sqrt(np.clip(ev, 0, None))) @ evec.T
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(a, b, upcast: bool = True) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [Na,D] and b [Nb,D] (unbiased covariances).
    upcast=False takes the means in the inputs' own dtype (np.cov always works in float64): the way
    ``faceanonymixer evaluate`` has always computed its embedding-space realism proxy, kept so that its
    metrics.json stay bit-identical (float32 embeddings: ~1e-9 relative difference)."""
    if upcast:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    else:
        a, b = np.asarray(a), np.asarray(b)
    assert a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] and len(a) >= 2 and len(b) >= 2, (a.shape, b.shape)
    cov_a, cov_b = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b))   # D = 1: np.cov gives a scalar
    return frechet_from_stats(a.mean(0), cov_a, b.mean(0), cov_b)
