"""ArcFace IR-SE50 (TreB1eN / pSp ``model_ir_se50.pth``, 512-D): the paper's identity-loss network.

Only used when the user supplies the official checkpoint; the backbone lives in ``models.irse`` and is imported
lazily. Input convention: RGB, (x - 0.5)/0.5, 112x112 ArcFace crop.
"""
from __future__ import annotations

import torch

from ..registry import locate
from .base import Recogniser


class ArcFaceIRSE50(Recogniser):
    name = "arcface-ir-se50"
    dim = 512
    differentiable = True
    white_box = True

    def __init__(self, path=None):  # path: explicit model_ir_se50.pth, else $FACEANONYMIXER_HOME / data folder
        super().__init__()
        self.path = locate("arcface-ir-se50", explicit=path)
        from ..models.irse import load_irse50  # lazy: heavy, and only needed with the official checkpoint
        net = load_irse50(self.path)
        net.eval()
        net.requires_grad_(False)
        self.net = net

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces * 2.0 - 1.0)   # [N,512]
