"""FacePlugin ``fr_feature.onnx`` (npm faceplugin-face-recognition-js 0.0.1): a third, independent 512-D net.

MobileFaceNet-like, fp32 ONNX run in plain PyTorch. Input convention: RGB, (x - 127)/128 with x in 0..255,
112x112 ArcFace crop (checked against onnxruntime and on genuine/impostor photos in tests/test_fr.py).
Provenance/training data unknown: evaluation only (black box), never the loss.
"""
from __future__ import annotations

import torch

from ..models.onnx_graph import OnnxGraphModule
from ..registry import locate
from .base import Recogniser


class FacePluginFR(Recogniser):
    name = "faceplugin-fr"
    dim = 512
    differentiable = True
    white_box = False

    def __init__(self, path=None):  # path: explicit .onnx file, else found through the registry
        super().__init__()
        self.path = locate("faceplugin-fr", explicit=path)
        self.net = OnnxGraphModule.from_onnx(self.path, dequantize=True)

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        x = (faces * 255.0 - 127.0) / 128.0   # [N,3,112,112] RGB
        return self.net(x)                    # [N,512]
