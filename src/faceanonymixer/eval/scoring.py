"""Scoring step of ``faceanonymixer evaluate``: cosine scores of every pair kind (eval/report.py lists them) from
the recognisers' embeddings, the FID status, and head-pose agreement (attribute preservation) from landmarks."""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .. import align, registry
from ..errors import FaceAnonyMixerError
from ..tensors import to_uint8
from . import report
from .config import EvalConfig
from .dataset import Dataset, Pairs


def cosines(ea: torch.Tensor, eb: torch.Tensor, ia, ib) -> np.ndarray:
    """Scores of the pairs (ea[ia[k]], eb[ib[k]]) of unit embeddings -> float64 [K]."""
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    if ia.size == 0:
        return np.zeros(0)
    return (ea[ia] * eb[ib]).sum(1).double().numpy()


def score_variant(scores: report.ScoreSet, variant: str, rec: str, ds: Dataset, pairs: Pairs, e_orig, e_k1, e_k2,
                  e_stolen, stolen_row) -> None:
    it = ds.items
    g, i = pairs.genuine, pairs.impostor
    tag = lambda role, idx: [f"{variant}:{role}:{it[k]}" for k in idx]  # noqa: E731
    o = lambda idx: [f"original:{it[k]}" for k in idx]  # noqa: E731
    scores.add(variant, "genuine", rec, tag("k1", g[:, 0]), tag("k1", g[:, 1]), cosines(e_k1, e_k1, g[:, 0], g[:, 1]))
    scores.add(variant, "impostor", rec, tag("k1", i[:, 0]), tag("k1", i[:, 1]), cosines(e_k1, e_k1, i[:, 0], i[:, 1]))
    n = len(it)
    scores.add(variant, "orig_prot_same", rec, o(range(n)), tag("k1", range(n)), cosines(e_orig, e_k1, range(n), range(n)))
    oa = np.concatenate([g[:, 0], g[:, 1]]); pb = np.concatenate([g[:, 1], g[:, 0]])
    scores.add(variant, "orig_prot_other", rec, o(oa), tag("k1", pb), cosines(e_orig, e_k1, oa, pb))
    scores.add(variant, "mated", rec, tag("k1", g[:, 0]), tag("k2", g[:, 1]), cosines(e_k1, e_k2, g[:, 0], g[:, 1]))
    scores.add(variant, "nonmated", rec, tag("k1", i[:, 0]), tag("k2", i[:, 1]), cosines(e_k1, e_k2, i[:, 0], i[:, 1]))
    if len(pairs.stolen):
        st = pairs.stolen
        vic = [ds.people[v] for v in pairs.stolen_victim]
        scores.add(variant, "stolen_key", rec, tag("k1", st[:, 0]),
                   [f"{variant}:key_of={v}:{it[b]}" for v, b in zip(vic, st[:, 1])],
                   cosines(e_k1, e_stolen, st[:, 0], stolen_row))


def score_original(scores: report.ScoreSet, rec: str, ds: Dataset, pairs: Pairs, e_orig) -> None:
    it = ds.items
    o = lambda idx: [f"original:{it[k]}" for k in idx]  # noqa: E731
    g, i = pairs.genuine, pairs.impostor
    scores.add(report.ORIGINAL, "genuine", rec, o(g[:, 0]), o(g[:, 1]), cosines(e_orig, e_orig, g[:, 0], g[:, 1]))
    scores.add(report.ORIGINAL, "impostor", rec, o(i[:, 0]), o(i[:, 1]), cosines(e_orig, e_orig, i[:, 0], i[:, 1]))


# --- quality and attributes -----------------------------------------------------------------------------------
def fid_status(cfg: EvalConfig) -> dict:
    """FID is only reported with the official Inception-v3 weights AND an Inception implementation; never faked."""
    try:
        path = registry.locate("inception-fid", explicit=cfg.fid_inception)
    except FaceAnonyMixerError:
        return {"fid": None, "fid_status": "not computed: the official Inception-v3 FID weights "
                "(pt_inception-2015-12-05-6726825d.pth) are not present (see `faceanonymixer weights`)"}
    return {"fid": None, "fid_status": f"not computed: weights found at {path}, but this package has no "
            "Inception-v3 network implementation yet (no torchvision by policy)"}


def pose_proxies(lm5: np.ndarray) -> np.ndarray:
    """(roll degrees, yaw proxy, pitch proxy) from 5 landmarks [image-left eye, image-right eye, nose, mouth l, r].
    yaw = horizontal nose offset from the eye midpoint / inter-ocular distance; pitch = vertical nose position
    between the eye line and the mouth line (0 = eyes, 1 = mouth)."""
    el, er, nose, ml, mr = (np.asarray(p, np.float64) for p in lm5)
    d = er - el
    iod = max(np.hypot(*d), 1e-6)
    roll = math.degrees(math.atan2(d[1], d[0]))
    u = d / iod                        # along the eye line
    nvec = np.array([-u[1], u[0]])     # perpendicular, pointing down the face
    eye_mid, mouth_mid = (el + er) / 2, (ml + mr) / 2
    yaw = float((nose - eye_mid) @ u / iod)
    em = max(float((mouth_mid - eye_mid) @ nvec), 1e-6)
    pitch = float((nose - eye_mid) @ nvec / em)
    return np.array([roll, yaw, pitch])


def attribute_preservation(orig_u8: np.ndarray, prot: torch.Tensor, upscale: int = 256) -> dict:
    """Head-pose agreement from YuNet landmarks on the original FFHQ crop vs the protected image (both upscaled)."""
    prot_u8 = to_uint8(prot)
    diffs, found = [], 0
    for a, b in zip(orig_u8, prot_u8):
        fa = align.detect(cv2.resize(a, (upscale, upscale), interpolation=cv2.INTER_CUBIC))
        fb = align.detect(cv2.resize(b, (upscale, upscale), interpolation=cv2.INTER_CUBIC))
        if fa and fb:
            found += 1
            diffs.append(np.abs(pose_proxies(fa[0].landmarks5) - pose_proxies(fb[0].landmarks5)))
    n = len(orig_u8)
    if not diffs:
        return {"n": n, "both_detected": 0}
    d = np.stack(diffs)
    return {"n": n, "both_detected": found, "roll_abs_diff_deg": float(d[:, 0].mean()),
            "yaw_proxy_abs_diff": float(d[:, 1].mean()), "pitch_proxy_abs_diff": float(d[:, 2].mean())}
