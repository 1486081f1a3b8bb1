"""Image grids for samples and reports (no torchvision)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..tensors import to_uint8


def make_grid(imgs: np.ndarray, nrow: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """[N,H,W,3] uint8 -> one grid image, nrow images per row."""
    n, h, w, _ = imgs.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), fill, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = imgs[i]
    return grid


def save_grid(x: torch.Tensor | np.ndarray, path: str | Path, nrow: int = 8, scale: int = 1) -> Path:
    imgs = to_uint8(x) if isinstance(x, torch.Tensor) else x
    g = Image.fromarray(make_grid(imgs, nrow))
    if scale != 1:
        g = g.resize((g.width * scale, g.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    g.save(tmp)
    tmp.replace(path)
    return path
