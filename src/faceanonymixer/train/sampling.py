"""Seeded sampling of a generator: seed s always gives the same face (z drawn on the CPU), for `generate`, the
model report and the probes."""
from __future__ import annotations

import torch


def parse_seeds(spec: str) -> list[int]:
    """'0-15' or '1,5,9' or '0-3,10' -> list of ints."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError(f"no seeds in '{spec}'")
    return out



@torch.no_grad()
def generate(G, seeds: list[int], psi: float = 0.7, noise_mode: str = "const") -> torch.Tensor:
    """[len(seeds),3,R,R] in [-1,1]; seed s draws z with torch.Generator().manual_seed(s) on the CPU."""
    z = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    dev = next(G.parameters()).device
    w = G.truncate(G.mapping(z.to(dev)), psi)
    return G.synthesis(w.unsqueeze(1).repeat(1, G.num_ws, 1), noise_mode=noise_mode).float().clamp(-1, 1)
