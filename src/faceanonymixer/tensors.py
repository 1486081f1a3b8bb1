"""Image <-> tensor conversions used everywhere: images as HxWx3 (or NxHxWx3) uint8 RGB arrays, tensors as
[3,R,R] / [N,3,R,R] float32 in [-1, 1] (the generator's range). One fixed mapping, no per-image rescaling, so a
round trip uint8 -> tensor -> uint8 is exact."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3,R,R] or [N,3,R,R] in [-1,1] -> HxWx3 / NxHxWx3 uint8 (values outside [-1,1] are clipped)."""
    assert x.dim() in (3, 4) and x.shape[-3] == 3, tuple(x.shape)
    y = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(*range(y.dim() - 3), -2, -1, -3).numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """HxWx3 -> [3,H,W], or NxHxWx3 -> [N,3,H,W], uint8 -> float32 in [-1,1]."""
    a = np.ascontiguousarray(a)
    assert a.ndim in (3, 4) and a.shape[-1] == 3 and a.dtype == np.uint8, (a.shape, a.dtype)
    t = torch.from_numpy(a)
    return t.permute(*range(t.dim() - 3), -1, -3, -2).float().div(127.5).sub(1.0)
