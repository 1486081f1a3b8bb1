"""dlib ResNet 128-D face recogniser (face_recognition_models): independent evaluation net, not differentiable.

dlib computes its descriptor on its *own* 150x150 face chip (5-point shape predictor + ``get_face_chip`` with
padding 0.25). ``embed`` therefore runs the 5-point predictor on each ArcFace crop, with a fixed box where dlib's
HOG detector puts an ArcFace-aligned face (measured on the sample photos), and lets dlib cut its chip. Descriptors
from crops land ~0.13 (Euclidean, raw) from those computed on the full photo. dlib's own metric is the Euclidean
distance of the raw descriptors (< 0.6 = same person, ``raw_descriptors``); cosines of the normalised embeddings are
compressed towards 1 (impostors ~0.8).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import MissingWeightsError
from ..registry import locate
from .base import ARCFACE_SIZE, Recogniser

# dlib HOG-detector box of an ArcFace-aligned face in the 112 crop (left, top, right, bottom; inclusive)
ARCFACE_DLIB_BOX = (5, 30, 102, 111)


def _import_dlib():
    try:
        import dlib  # heavy native extension: loaded only when this recogniser is used
    except ImportError as e:
        raise MissingWeightsError("the dlib-resnet recogniser needs the 'dlib' runtime: "
                                  "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0") from e
    return dlib


class DlibResNet(Recogniser):
    name = "dlib-resnet"
    dim = 128
    differentiable = False
    white_box = False

    def __init__(self, path=None, sp5_path=None):  # path: .dat recogniser; sp5_path: 5-point predictor .dat
        super().__init__()
        dlib = _import_dlib()
        self._dlib = dlib
        self.path = locate("dlib-resnet", explicit=path)
        self.sp5_path = locate("dlib-sp5", explicit=sp5_path)
        self._net = dlib.face_recognition_model_v1(str(self.path))
        self._sp5 = dlib.shape_predictor(str(self.sp5_path))

    def _descriptor(self, rgb: np.ndarray, rect) -> np.ndarray:
        shape = self._sp5(rgb, rect)
        return np.asarray(self._net.compute_face_descriptor(rgb, shape), dtype=np.float32)

    def raw_descriptors(self, faces: torch.Tensor) -> np.ndarray:
        """faces[N,3,112,112] RGB [0,1] ArcFace-aligned -> raw dlib descriptors [N,128] (float32 numpy)."""
        assert faces.dim() == 4 and tuple(faces.shape[1:]) == (3, ARCFACE_SIZE, ARCFACE_SIZE), tuple(faces.shape)
        imgs = (faces.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        rect = self._dlib.rectangle(*ARCFACE_DLIB_BOX)
        out = [self._descriptor(np.ascontiguousarray(im), rect) for im in imgs]
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.raw_descriptors(faces))

    def embed_image(self, rgb_uint8: np.ndarray, box) -> torch.Tensor:
        """Whole photo: rgb_uint8[H,W,3] and a detector box (x0, y0, x1, y1) or a dlib.rectangle -> [1,128]
        L2-normalised, via dlib's 5-point predictor on that box and dlib's own face chip."""
        img = np.ascontiguousarray(rgb_uint8)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, (img.shape, img.dtype)
        if not isinstance(box, self._dlib.rectangle):
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            box = self._dlib.rectangle(x0, y0, x1, y1)
        d = torch.from_numpy(self._descriptor(img, box))[None]
        return torch.nn.functional.normalize(d, dim=1)
