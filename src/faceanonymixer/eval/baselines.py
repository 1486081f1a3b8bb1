"""Classical de-identification baselines for the report: Gaussian blur and pixelation.

Both work on image tensors x[N,3,H,W] in any range (they are linear and range-preserving), so they can be
applied to the same FFHQ-aligned [-1, 1] crops the method protects and be scored by exactly the same
recogniser path. They take no key: every "key" gives the same output, which is why they are neither
revocable nor unlinkable - the report shows that.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with std ``sigma`` pixels (at x's resolution), reflect padding."""
    assert x.ndim == 4, f"expected x[N,C,H,W], got {tuple(x.shape)}"
    if sigma <= 0:
        return x.clone()
    n, c, h, w = x.shape
    k = gaussian_kernel1d(sigma).to(x)
    r = k.numel() // 2
    mode = "reflect" if r < min(h, w) else "replicate"
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def pixelate(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mosaic: average over ``block`` x ``block`` cells, then nearest upsampling back to H x W."""
    assert x.ndim == 4, f"expected x[N,C,H,W], got {tuple(x.shape)}"
    if block <= 1:
        return x.clone()
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, math.ceil(h / block)), max(1, math.ceil(w / block))))
    return F.interpolate(small, size=(h, w), mode="nearest")


BASELINES = {"blur": blur, "pixelate": pixelate}


def apply(name: str, x: torch.Tensor, strength: float) -> torch.Tensor:
    """``apply('blur', x, sigma)`` or ``apply('pixelate', x, block)``."""
    if name == "blur":
        return blur(x, float(strength))
    if name == "pixelate":
        return pixelate(x, int(strength))
    raise ValueError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
