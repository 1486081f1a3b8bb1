"""``faceanonymixer generate``: sample faces from a generator (ours by default) - images plus a grid."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images import write_png_atomic
from ..models.loading import load_generator
from ..tensors import to_uint8
from ..train.grid import save_grid
from ..train.sampling import generate, parse_seeds

HELP = "sample faces from the generator: one PNG per seed plus grid.png"


def add_arguments(p):
    p.add_argument("--seeds", default="0-15", help="seeds, e.g. 0-15 or 1,5,9 (default 0-15)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--generator", default="fam-stylegan2-64", help="registry name or checkpoint file")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi (default 0.7)")
    p.add_argument("--noise", default="const", choices=["const", "random", "none"], help="noise mode")


def run(args) -> int:
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
