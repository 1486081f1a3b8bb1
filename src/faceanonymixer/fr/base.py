"""Recogniser base class, the fixed FFHQ -> ArcFace-112 warp, and the cosine helper.

Every face recogniser takes ArcFace-aligned 112x112 RGB crops in [0, 1] (``embed``) and returns L2-normalised
embeddings; the model-specific input convention (BGR, 0..255, mean/std) is handled inside each backend.
``embed_ffhq`` lets the generator's FFHQ-aligned output ([-1, 1], any resolution) be scored with the same nets
through one fixed, differentiable affine warp (``align.ffhq_to_arcface_matrix``: the FFHQ quad of the ArcFace
template), equal to ``cv2.warpAffine`` with that matrix to < 1/255.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..align import ARCFACE_SIZE, ARCFACE_TEMPLATE, ffhq_quad, ffhq_to_arcface_matrix  # one source of geometry


def _theta_for_grid(m: np.ndarray, src_size: int, dst_size: int) -> torch.Tensor:
    """affine_grid theta (align_corners=False) that reproduces cv2.warpAffine(src, m, (dst, dst))."""
    m3 = np.r_[m, [[0.0, 0.0, 1.0]]]
    inv = np.linalg.inv(m3)  # dst pixel -> src pixel

    def norm(n):  # pixel (integer centres) -> [-1, 1] with align_corners=False: u = (2p + 1)/n - 1
        return np.array([[2.0 / n, 0, 1.0 / n - 1], [0, 2.0 / n, 1.0 / n - 1], [0, 0, 1]])

    theta = norm(src_size) @ inv @ np.linalg.inv(norm(dst_size))
    return torch.tensor(theta[:2], dtype=torch.float32)


class FFHQToArcFace(nn.Module):
    """Fixed differentiable warp: FFHQ-aligned x[N,3,R,R] -> ArcFace-aligned [N,3,112,112] (same value range).
    Large inputs are first area-filtered (antialiased bilinear resize) to about one source pixel per output pixel."""

    def __init__(self, size: int):  # size: R, the FFHQ crop resolution this warp expects
        super().__init__()
        self.size = int(size)
        _, qsize = ffhq_quad(ARCFACE_TEMPLATE)  # FFHQ crop side in ArcFace-112 pixels (~147)
        self.pre_size = int(math.ceil(qsize)) if self.size > 2.0 * qsize else None
        work = self.pre_size or self.size
        self.register_buffer("theta", _theta_for_grid(ffhq_to_arcface_matrix(work), work, ARCFACE_SIZE)[None],
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3] == self.size, tuple(x.shape)
        if self.pre_size is not None:
            x = F.interpolate(x, size=(self.pre_size, self.pre_size), mode="bilinear", align_corners=False,
                              antialias=True)
        theta = self.theta.to(dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], 3, ARCFACE_SIZE, ARCFACE_SIZE], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dim: a[N,D], b[N,D] (or broadcastable) -> [N]."""
    return F.cosine_similarity(a, b, dim=-1)


class Recogniser(nn.Module):
    """Base class. Subclasses set ``name``, ``dim``, ``differentiable``, ``white_box`` and implement
    ``_embed(faces[N,3,112,112] RGB in [0,1]) -> [N,dim]`` (unnormalised, on the recogniser's device).

    ``white_box``: the net may be used inside the optimisation loss (its gradients are trusted);
    False marks nets kept for independent/black-box evaluation."""

    name: str = "?"
    dim: int = 0
    differentiable: bool = False
    white_box: bool = False

    def __init__(self):
        super().__init__()
        self._warps: dict[int, FFHQToArcFace] = {}

    @property
    def device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def train(self, mode: bool = True):  # frozen inference nets: stay in eval mode whatever the parent does
        return super().train(False)

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """faces[N,3,112,112] RGB float in [0,1], ArcFace-aligned -> [N,dim] L2-normalised, on faces' device."""
        assert faces.dim() == 4 and tuple(faces.shape[1:]) == (3, ARCFACE_SIZE, ARCFACE_SIZE), tuple(faces.shape)
        dev = faces.device
        x = faces.to(device=self.device, dtype=torch.float32)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            z = self._embed(x)
            assert z.shape == (faces.shape[0], self.dim), (tuple(z.shape), self.dim)
            z = F.normalize(z, dim=1)
        return z.to(dev)

    def embed_ffhq(self, x: torch.Tensor) -> torch.Tensor:
        """x[N,3,R,R] in [-1,1], FFHQ-aligned (any R) -> [N,dim] L2-normalised, via the fixed ArcFace warp."""
        assert x.dim() == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3], tuple(x.shape)
        return self.embed(self.ffhq_to_arcface(x))

    def ffhq_to_arcface(self, x: torch.Tensor) -> torch.Tensor:
        """x[N,3,R,R] in [-1,1] FFHQ-aligned -> [N,3,112,112] in [0,1] ArcFace-aligned (differentiable)."""
        size = int(x.shape[-1])
        if size not in self._warps:
            self._warps[size] = FFHQToArcFace(size)
        return self._warps[size]((x + 1.0) * 0.5)

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}, differentiable={self.differentiable}, white_box={self.white_box}"
