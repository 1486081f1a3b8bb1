"""Soft-biometric leakage of ``faceanonymixer evaluate``: does a protected face keep the original's gender and age?

For every image, gender (male score > 0.5) and age (years) are estimated on the original FFHQ crop and on its
protected version with FacePlugin's SSR-Net nets (fr/attributes.py). Reported per variant: the gender agreement
rate, the mean absolute age difference and the rate of age differences <= ``AGE_TOL`` years, each next to the
same numbers between two *original* photos of the same person (how much the estimators agree with themselves
across photos: leakage can only be read against it). A protection that hides soft biometrics would bring the
original-vs-protected agreement down to the agreement between unrelated people, which is reported too.
"""
from __future__ import annotations

import numpy as np
import torch

AGE_TOL = 10.0   # years: two age estimates "agree" when they differ by at most this much


def _agree(g_a, a_a, g_b, a_b) -> dict:
    g_a, a_a, g_b, a_b = (np.asarray(t, dtype=np.float64) for t in (g_a, a_a, g_b, a_b))
    if g_a.size == 0:
        return {"gender_agreement": None, "age_abs_diff": None, "age_agreement": None, "n": 0}
    d = np.abs(a_a - a_b)
    return {"gender_agreement": float(np.mean((g_a > 0.5) == (g_b > 0.5))), "age_abs_diff": float(d.mean()),
            "age_agreement": float(np.mean(d <= AGE_TOL)), "n": int(g_a.size)}


def pairs_same_person(person_of: np.ndarray) -> np.ndarray:
    """[P,2] item pairs (a < b) of the same person."""
    po = np.asarray(person_of)
    return np.array([(a, b) for a in range(len(po)) for b in range(a + 1, len(po)) if po[a] == po[b]],
                    dtype=np.int64).reshape(-1, 2)


def pairs_other_person(person_of: np.ndarray) -> np.ndarray:
    """[n,2]: each item with the first item of the next person (a fixed, unrelated partner)."""
    po = np.asarray(person_of)
    people = np.unique(po)
    if len(people) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    first = {p: int(np.flatnonzero(po == p)[0]) for p in people.tolist()}
    nxt = {p: people[(k + 1) % len(people)] for k, p in enumerate(people.tolist())}
    return np.array([(i, first[nxt[p]]) for i, p in enumerate(po.tolist())], dtype=np.int64).reshape(-1, 2)


def leakage(estimator, original: torch.Tensor, protected: dict[str, torch.Tensor], person_of: np.ndarray) -> dict:
    """original[n,3,R,R] FFHQ crops in [-1,1]; protected {variant: [n,3,R',R'] protected versions}; person_of[n].
    -> {'original_same_person': ..., 'original_other_person': ..., 'variants': {v: agreement orig vs protected},
        'mean_age_original': ..., 'male_rate_original': ...}."""
    g0, a0 = estimator.predict_ffhq(original)
    g0, a0 = g0.numpy(), a0.numpy()
    same, other = pairs_same_person(person_of), pairs_other_person(person_of)
    out = {"original_same_person": _agree(g0[same[:, 0]], a0[same[:, 0]], g0[same[:, 1]], a0[same[:, 1]]),
           "original_other_person": _agree(g0[other[:, 0]], a0[other[:, 0]], g0[other[:, 1]], a0[other[:, 1]]),
           "male_rate_original": float(np.mean(g0 > 0.5)) if g0.size else None,
           "mean_age_original": float(a0.mean()) if a0.size else None, "age_tolerance_years": AGE_TOL,
           "variants": {}}
    for v, x in protected.items():
        g, a = estimator.predict_ffhq(x)
        out["variants"][v] = {**_agree(g0, a0, g.numpy(), a.numpy()), "male_rate": float(np.mean(g.numpy() > 0.5)),
                              "mean_age": float(a.mean())}
    return out
