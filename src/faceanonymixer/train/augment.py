"""Differentiable augmentation (DiffAugment-style: colour, translation, cutout) applied to both real and fake
images before the discriminator, so a GAN can be trained on a few thousand faces without D memorising them.
All ops are differentiable w.r.t. the images and take an explicit torch.Generator for reproducibility."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x: [N,C,H,W] in [-1,1] -> augmented [N,C,H,W]. ``policy``: comma-separated subset of color/translation/cutout."""
    assert x.ndim == 4, x.shape
    for p in filter(None, policy.split(",")):
        x = _OPS[p.strip()](x, generator)
    return x


def _rand(n, x, g):
    return torch.rand(n, 1, 1, 1, generator=g, device="cpu").to(x.device, x.dtype)


def _color(x, g):
    n = x.shape[0]
    x = x + (_rand(n, x, g) - 0.5)                                       # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x, g) * 2) + mean                         # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (_rand(n, x, g) + 0.5) + mean                       # contrast
    return x


def _translation(x, g, ratio: float = 0.125):
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (n, 1, 1), generator=g).to(x.device)
    ty = torch.randint(-sw, sw + 1, (n, 1, 1), generator=g).to(x.device)
    bi, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    xp = F.pad(x, [1, 1, 1, 1])
    return xp.permute(0, 2, 3, 1)[bi, gx, gy].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _cutout(x, g, ratio: float = 0.5):
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g).to(x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g).to(x.device)
    bi, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[bi, gx, gy] = 0
    return x * mask.unsqueeze(1)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}
