"""Generator sampling helpers of the quality report (also used by lab/probes): seeded truncated w (as
``faceanonymixer generate``), const-noise synthesis, W+ style mixing, layer-range parsing and the style-mixing grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...tensors import to_uint8
from ...train.grid import make_grid

PSI = 0.7


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """'1-3,3-7,5' -> [(1, 3), (3, 7), (5, 5)] (inclusive)."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        a, b = int(a), int(b) if b else int(a)
        if b < a:
            raise ValueError(f"layer range '{part}': end before start")
        out.append((a, b))
    if not out:
        raise ValueError(f"no layer ranges in '{spec}'")
    return out


def fmt_range(layers) -> str:
    layers = list(layers)
    if not layers:
        return "-"
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


@torch.no_grad()
def seed_ws(G, seeds, psi: float = PSI) -> torch.Tensor:
    """[N,w_dim] truncated w of ``seeds`` (z seeded exactly as ``faceanonymixer generate``)."""
    z = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    dev = G.latent_avg.device
    return G.truncate(G.mapping(z.to(dev)), psi)


@torch.no_grad()
def synth(G, ws: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """ws [N,num_ws,w_dim] (or w [N,w_dim], broadcast) -> images [N,3,R,R] in [-1,1] on the CPU (const noise)."""
    if ws.ndim == 2:
        ws = ws.unsqueeze(1).repeat(1, G.num_ws, 1)
    dev = G.latent_avg.device
    out = [G.synthesis(ws[i:i + batch].to(dev), noise_mode="const").float().clamp(-1, 1).cpu()
           for i in range(0, len(ws), batch)]
    return torch.cat(out)


def mix(w_a: torch.Tensor, w_b: torch.Tensor, layers, num_ws: int) -> torch.Tensor:
    """W+ codes of A with ``layers`` taken from B: w_a, w_b [N,w_dim] -> [N,num_ws,w_dim]."""
    ws = w_a.unsqueeze(1).repeat(1, num_ws, 1)
    idx = list(layers)
    if idx:
        ws[:, idx] = w_b.unsqueeze(1).expand(-1, len(idx), -1).to(ws.dtype)
    return ws


def _label(img: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    bar = Image.new("RGB", (img.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(bar).text((2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(bar), img], axis=0)


def save_image(arr: np.ndarray, path: Path, scale: int = 1) -> Path:
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp.png")
    im.save(tmp)
    tmp.replace(path)
    return path


def style_mixing_grid(G, bands: dict[str, list[int]], a_seeds, b_seeds) -> np.ndarray:
    """Panels side by side (one per band): top row B samples, left column A samples, cell (i, j) = A_i with the
    band's layers taken from B_j."""
    w_a, w_b = seed_ws(G, a_seeds), seed_ws(G, b_seeds)
    img_a, img_b = to_uint8(synth(G, w_a)), to_uint8(synth(G, w_b))
    r = G.resolution
    blank = np.full((1, r, r, 3), 255, np.uint8)
    panels = []
    for name, layers in bands.items():
        cells = [blank, img_b]
        for i in range(len(a_seeds)):
            wa = w_a[i:i + 1].expand(len(b_seeds), -1)
            cells += [img_a[i:i + 1], to_uint8(synth(G, mix(wa, w_b, layers, G.num_ws)))]
        grid = make_grid(np.concatenate(cells), nrow=len(b_seeds) + 1)
        panels.append(_label(grid, f"{name} (W+ {fmt_range(layers)}) from top row"))
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)
