"""Soft-biometric estimators: FacePlugin's SSR-Net gender and age nets (npm faceplugin-face-recognition-js 0.0.1,
``fr_gender.onnx`` / ``fr_age.onnx``), run in the plain-PyTorch ONNX executor (models/onnx_graph.py).

Input convention (from the package's JavaScript): a 64x64 RGB crop of the detector's face box enlarged 1.4x,
ImageNet normalisation ((x/255 - mean)/std). The nets have nine outputs (three stages of 3-bin probabilities,
per-stage scale shifts ``delta_k`` and bin offsets); ``ssr_merge`` is SSR-Net's soft stagewise regression, the
same formula as the package's ``mergeGender`` / ``mergeAge`` (gender: V = 1, a male score in [0, 1]; age: V = 101,
years). We feed the central ``CROP`` of an FFHQ-aligned crop, which frames the face about as the 1.4x box does
(chosen on LFW photos against the package's own box crop, docs/evaluation.md). Evaluation only (unknown
provenance and training data): never a loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.onnx_graph import OnnxGraphModule
from ..registry import locate

OUTPUTS = ["prob_stage_1", "prob_stage_2", "prob_stage_3", "stage1_delta_k", "stage2_delta_k", "stage3_delta_k",
           "index_offset_stage1", "index_offset_stage2", "index_offset_stage3"]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 0.75          # central fraction of the FFHQ crop fed to the nets (~ the detector box x 1.4)
SIZE = 64            # the nets' input side


def ssr_merge(outs, value_range: float, stages=(3, 3, 3)) -> torch.Tensor:
    """SSR-Net soft stagewise regression: the nine outputs ([N,3] x3, [N,1] x3, [N,3] x3) -> [N] value."""
    probs, dks, offs = outs[0:3], outs[3:6], outs[6:9]
    out = 0.0
    denom = 1.0
    for p, dk, off, s in zip(probs, dks, offs, stages):
        denom = denom * (s * (1.0 + dk[:, 0]))
        idx = torch.arange(s, dtype=p.dtype, device=p.device)[None]
        out = out + ((idx + off) * p).sum(dim=1) / denom
    return out * value_range


class SoftBiometrics(nn.Module):
    """Gender and age of FFHQ-aligned faces: ``predict_ffhq(x[N,3,R,R] in [-1,1]) -> (male[N] in [0,1], age[N])``."""

    def __init__(self, gender_path=None,   # explicit fr_gender.onnx, else the registry ('faceplugin-gender')
                 age_path=None):           # explicit fr_age.onnx, else the registry ('faceplugin-age')
        super().__init__()
        self.gender = OnnxGraphModule.from_onnx(locate("faceplugin-gender", explicit=gender_path), outputs=OUTPUTS)
        self.age = OnnxGraphModule.from_onnx(locate("faceplugin-age", explicit=age_path), outputs=OUTPUTS)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):   # frozen inference nets
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x[N,3,R,R] FFHQ-aligned in [-1,1] -> the nets' input [N,3,64,64] (central crop, ImageNet-normalised)."""
        assert x.dim() == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3], tuple(x.shape)
        r = x.shape[-1]
        c = max(1, round(r * CROP))
        o = (r - c) // 2
        x = x[:, :, o:o + c, o:o + c]
        x = F.interpolate((x + 1.0) * 0.5, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                          antialias=c > SIZE)
        return (x - self.mean.to(x)) / self.std.to(x)

    def forward_prepared(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z[N,3,64,64] already prepared -> (male score [N] in [0,1], age [N] in years)."""
        return ssr_merge(self.gender(z), 1.0), ssr_merge(self.age(z), 101.0)

    @torch.no_grad()
    def predict_ffhq(self, x: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """x[N,3,R,R] FFHQ-aligned in [-1,1] -> (male [N], age [N]) on the CPU."""
        dev = self.mean.device
        g, a = [], []
        for s in range(0, len(x), batch):
            gi, ai = self.forward_prepared(self.prepare(x[s:s + batch].to(dev, torch.float32)))
            g.append(gi.cpu())
            a.append(ai.cpu())
        if not g:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat(g), torch.cat(a)
