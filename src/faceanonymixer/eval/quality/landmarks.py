"""Face detection on generated or aligned tensors for the quality report (also used by lab/probes): YuNet on
bicubic upscales, the largest face, landmarks mapped back to the tensor's frame, optional ArcFace crops; and the
landmark pose-change measure (mean 5-landmark displacement / inter-ocular distance)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...align import align_arcface, detect
from ...tensors import to_uint8

DETECT_SIDE = 256          # samples are upscaled to this side (bicubic) before detection


def pose_change(lm_a: np.ndarray, lm_b: np.ndarray) -> np.ndarray:
    """Mean 5-landmark displacement / inter-ocular distance of a: lm_a, lm_b [N,5,2] -> [N]."""
    iod = np.linalg.norm(lm_a[:, 0] - lm_a[:, 1], axis=1)
    return np.linalg.norm(lm_a - lm_b, axis=2).mean(1) / np.maximum(iod, 1e-6)


@dataclass
class Detections:
    found: np.ndarray                    # [N] bool
    lm: np.ndarray                       # [N,5,2] landmarks in the input frame (nan where not found)
    scores: np.ndarray                   # [N] detector score (nan where not found)
    crops: np.ndarray                    # [M,112,112,3] uint8 ArcFace crops of the found faces (if asked)

    @property
    def rate(self) -> float:
        return float(self.found.mean()) if len(self.found) else float("nan")



def detect_batch(x: torch.Tensor, crops: bool = False, side: int = DETECT_SIDE) -> Detections:
    """x[N,3,R,R] in [-1,1] -> bicubic upscale to ``side`` (when R < side), YuNet, largest face; landmarks are
    mapped back to the R-pixel frame (index coordinates); optional ArcFace crops from the upscaled image."""
    n, r = x.shape[0], x.shape[-1]
    found = np.zeros(n, bool)
    lm = np.full((n, 5, 2), np.nan)
    scores = np.full(n, np.nan)
    out_crops = []
    for i0 in range(0, n, 32):
        xb = x[i0:i0 + 32].detach().float().cpu()
        if r < side:
            xb = F.interpolate(xb, size=(side, side), mode="bicubic", align_corners=False)
        s = xb.shape[-1] / r
        for j, img in enumerate(to_uint8(xb)):
            faces = detect(img)
            if not faces:
                continue
            f = max(faces, key=lambda fc: fc.area)
            i = i0 + j
            found[i] = True
            scores[i] = f.score
            lm[i] = (f.landmarks5.astype(np.float64) + 0.5) / s - 0.5
            if crops:
                out_crops.append(align_arcface(img, f.landmarks5))
    c = np.stack(out_crops) if out_crops else np.zeros((0, 112, 112, 3), np.uint8)
    return Detections(found, lm, scores, c)
