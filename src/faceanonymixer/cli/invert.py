"""``faceanonymixer invert``: align real photos, encode them into W+ and re-synthesise.

Writes ``<name>_pair.png`` (aligned input | reconstruction) and ``<name>.png`` (reconstruction alone). Bad
items (no face, not an image) are reported at the end and give a non-zero exit code; the rest go on."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..align import align_ffhq, largest_face
from ..errors import FaceAnonyMixerError
from ..images import list_images, read_image, write_png_atomic
from ..models.encoders import load_inverter
from ..models.loading import load_generator
from ..tensors import from_uint8, to_uint8

HELP = "invert photos with the encoder: aligned input | reconstruction side by side, and the reconstruction"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--generator", default="fam-stylegan2-64", help="registry name or checkpoint file")
    p.add_argument("--encoder", default="fam-e4e-64", help="registry name or encoder weights file")


def run(args) -> int:

    G = load_generator(args.generator).eval()
    inv = load_inverter(args.encoder, generator=G)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures, done = [], 0
    for path in list_images(args.images):
        try:
            rgb = read_image(path)
            face = largest_face(rgb, source=str(path))
            aligned = align_ffhq(rgb, face.landmarks5, G.resolution)
        except FaceAnonyMixerError as e:
            failures.append((str(path), str(e)))
            continue
        x = from_uint8(aligned)[None]
        with torch.no_grad():
            y = G.synthesis(inv.encode(x), noise_mode="const")
        rec = to_uint8(y)[0]
        name = Path(path).stem
        write_png_atomic(out / f"{name}_pair.png", np.concatenate([aligned, rec], axis=1))
        write_png_atomic(out / f"{name}.png", rec)
        done += 1
    print(f"inverted {done} image(s) into {out}")
    if failures:
        print(f"{len(failures)} item(s) failed:")
        for p, e in failures:
            print(f"  {p}: {e}")
        return 1
    return 0
