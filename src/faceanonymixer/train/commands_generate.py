"""``faceanonymixer generate``: sample faces from a generator (ours by default) - images plus a grid."""
from __future__ import annotations

import json
from pathlib import Path

import torch

HELP = "sample faces from the generator: one PNG per seed plus grid.png"


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


def add_arguments(p):
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. 0-15 or 1,5,9 (default 0-15)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--generator", default="fam-stylegan2-64", help="registry name or checkpoint file")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi (default 0.7)")
    p.add_argument("--noise", default="const", choices=["const", "random", "none"], help="noise mode")


@torch.no_grad()
def generate(G, seeds: list[int], psi: float = 0.7, noise_mode: str = "const") -> torch.Tensor:
    """[len(seeds),3,R,R] in [-1,1]; seed s draws z with torch.Generator().manual_seed(s) on the CPU."""
    z = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    dev = next(G.parameters()).device
    w = G.truncate(G.mapping(z.to(dev)), psi)
    return G.synthesis(w.unsqueeze(1).repeat(1, G.num_ws, 1), noise_mode=noise_mode).float().clamp(-1, 1)


def run(args) -> int:
    from ..images import write_png_atomic
    from ..models.loading import load_generator
    from .grid import save_grid, to_uint8
    seeds = parse_seeds(args.seeds)
    G = load_generator(args.generator).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    imgs = torch.cat([generate(G, seeds[i:i + 32], args.psi, args.noise) for i in range(0, len(seeds), 32)])
    for s, im in zip(seeds, to_uint8(imgs)):
        write_png_atomic(out / f"seed{s:04d}.png", im)
    nrow = max(1, min(8, int(round(len(seeds) ** 0.5))))
    save_grid(imgs, out / "grid.png", nrow=nrow)
    (out / "generate.json").write_text(json.dumps(dict(generator=args.generator, psi=args.psi, seeds=seeds,
                                                       noise=args.noise), indent=1))
    print(f"wrote {len(seeds)} images and grid.png to {out}")
    return 0
