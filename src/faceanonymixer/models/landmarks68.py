"""FacePlugin's 68-point landmark regressor (``fr_landmark.onnx``, npm faceplugin-face-recognition-js 0.0.1) as a
differentiable torch module, for FFHQ-aligned images at the generator's resolution.

The net takes a 64x64 grey face box (0..255 / 256) and returns 68 (x, y) pairs in [0, 1] of that box (the
package's ``fr_landmark.js``). FFHQ alignment puts the face at a fixed place, so a fixed box replaces a detector:
``FFHQ_BOX`` (fractions of the image side) was chosen by a one-off check on 200 held-out aligned LFW faces, where
the net's 5 points (eye centres, nose tip, mouth corners) sat ~10 % of the inter-ocular distance from YuNet's
(the tests check < 15 % on a sample photo).
Used by the landmark probes (lab/probes/band_probe.py); generator runs 8-11 trained with it as a loss term
(docs/models.md; those trainer options were not shipped and live at commit 1f56aad).
It is a different net from YuNet, the detector that the model report measures the landmark shift with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import locate
from .onnx_graph import OnnxGraphModule

FFHQ_BOX = (10 / 64, 12 / 64, 44 / 64, 46 / 64)   # (x0, y0, w, h) of the face box, fractions of the image side
LEFT_EYE, RIGHT_EYE = [37, 38, 40, 41], [43, 44, 46, 47]   # 68-point indices around each eye (image left/right)
INNER = list(range(17, 68))   # brows, eyes, nose, mouth: the jaw contour (0-16) is the face outline, part of
                              # identity, which the swapped band is meant to change


def similarity_fit(pa: torch.Tensor, pb: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Least-squares similarity transform of points pa onto pb, p -> R (p - ca) + cb with R = [[a, -b], [b, a]]
    (a = s cos(theta), b = s sin(theta)): pa, pb [N,K,2] -> a [N], b [N], ca [N,1,2], cb [N,1,2]."""
    assert pa.shape == pb.shape and pa.ndim == 3 and pa.shape[-1] == 2, (pa.shape, pb.shape)
    ca, cb = pa.mean(1, keepdim=True), pb.mean(1, keepdim=True)
    qa, qb = pa - ca, pb - cb
    den = (qa ** 2).sum((1, 2)).clamp_min(1e-6)
    a = (qa * qb).sum((1, 2)) / den
    b = (qa[..., 0] * qb[..., 1] - qa[..., 1] * qb[..., 0]).sum(1) / den
    return a, b, ca, cb


def framing_shift(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """How far a face moved as a whole (shift, roll, scale) from points pa to pb: the least-squares similarity
    transform S of pa onto pb, then mean |S(p) - p| over pa (pixels). Shape changes, which identity may bring,
    do not count. pa, pb [N,K,2] -> [N]."""
    a, b, ca, cb = similarity_fit(pa, pb)
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [N,2,2]
    return ((pa - ca) @ rot.transpose(1, 2) + cb - pa).norm(dim=-1).mean(1)


class Landmarks68(nn.Module):
    """``forward(x[N,3,R,R] in [-1,1]) -> [N,68,2]`` landmark (x, y) in pixels of the R frame (pixel centres at
    integer coordinates); frozen, differentiable w.r.t. x."""

    def __init__(self, path=None,          # explicit fr_landmark.onnx, else found through the registry
                 box=FFHQ_BOX):            # face box (x0, y0, w, h) as fractions of the image side
        super().__init__()
        self.path = locate("faceplugin-landmark", explicit=path)
        self.net = OnnxGraphModule.from_onnx(self.path, dequantize=False)
        self.box = tuple(float(v) for v in box)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3], x.shape
        n, r = x.shape[0], x.shape[-1]
        x0, y0, bw, bh = self.box
        grey = (x.float() + 1) * 127.5                                          # [N,3,R,R] -> 0..255
        grey = (0.299 * grey[:, 0] + 0.587 * grey[:, 1] + 0.114 * grey[:, 2]).unsqueeze(1)  # [N,1,R,R]
        # the box resampled to 64x64: affine_grid works in [-1,1] of the whole image
        theta = x.new_tensor([[bw, 0.0, 2 * x0 + bw - 1], [0.0, bh, 2 * y0 + bh - 1]]).float().expand(n, 2, 3)
        grid = F.affine_grid(theta, (n, 1, 64, 64), align_corners=False)
        crop = F.grid_sample(grey, grid, mode="bilinear", align_corners=False)  # [N,1,64,64]
        out = self.net(crop / 256.0).reshape(n, 68, 2)                          # box fractions
        scale = out.new_tensor([bw * r, bh * r])
        return out * scale + out.new_tensor([x0 * r, y0 * r]) - 0.5             # [N,68,2] pixels

    @staticmethod
    def inter_ocular(lm: torch.Tensor) -> torch.Tensor:
        """lm [N,68,2] -> [N] distance between the eye centres."""
        return (lm[:, RIGHT_EYE].mean(1) - lm[:, LEFT_EYE].mean(1)).norm(dim=-1)

    @staticmethod
    def shift(lm_a: torch.Tensor, lm_b: torch.Tensor, points=INNER) -> torch.Tensor:
        """Mean displacement of ``points`` from a to b over a's inter-ocular distance: [N,68,2] x2 -> [N]."""
        assert lm_a.shape == lm_b.shape and lm_a.shape[1:] == (68, 2), (lm_a.shape, lm_b.shape)
        d = (lm_b[:, points] - lm_a[:, points]).norm(dim=-1).mean(1)
        return d / Landmarks68.inter_ocular(lm_a).clamp_min(1e-3)

    @staticmethod
    def five(lm: torch.Tensor) -> torch.Tensor:
        """lm [N,68,2] -> [N,5,2]: eye centres, nose tip, mouth corners (YuNet's and the aligner's points)."""
        return torch.stack([lm[:, LEFT_EYE].mean(1), lm[:, RIGHT_EYE].mean(1), lm[:, 30], lm[:, 48], lm[:, 54]], 1)

    @staticmethod
    def framing_shift(lm_a: torch.Tensor, lm_b: torch.Tensor) -> torch.Tensor:
        """``framing_shift`` of the 5 points of two 68-point sets over a's inter-ocular distance: [N,68,2] x2 -> [N]."""
        assert lm_a.shape == lm_b.shape and lm_a.shape[1:] == (68, 2), (lm_a.shape, lm_b.shape)
        pa = Landmarks68.five(lm_a)
        return framing_shift(pa, Landmarks68.five(lm_b)) / Landmarks68.inter_ocular(lm_a).clamp_min(1e-3)

    def image_shift(self, x: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """``shift`` from image x's landmarks (a fixed target, no gradient) to x_b's: x, x_b [N,3,R,R] -> [N]."""
        with torch.no_grad():
            target = self(x)
        return self.shift(target, self(x_b))
