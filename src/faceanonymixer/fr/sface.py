"""SFace (OpenCV Zoo face_recognition_sface_2021dec, int8 block-quantised ONNX): the default loss network.

The int8 weights are dequantised to fp32 in memory at load time and the graph runs in plain PyTorch
(``models.onnx_graph``), so it is differentiable. The graph expects BGR, 0..255, 112x112 ArcFace crops (it does
its own (x - 127.5)/128 inside); ``embed`` takes our RGB [0,1] convention and converts.
"""
from __future__ import annotations

import torch

from ..models.onnx_graph import OnnxGraphModule
from ..registry import locate
from .base import Recogniser


class SFace(Recogniser):
    name = "sface"
    dim = 128
    differentiable = True
    white_box = True

    def __init__(self, path=None):  # path: explicit .onnx file, else found through the registry
        super().__init__()
        self.path = locate("sface", explicit=path)
        self.net = OnnxGraphModule.from_onnx(self.path, dequantize=True)

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        bgr255 = faces.flip(1) * 255.0   # [N,3,112,112] RGB [0,1] -> BGR 0..255
        return self.net(bgr255)          # [N,128] ('fc1', before normalisation)
