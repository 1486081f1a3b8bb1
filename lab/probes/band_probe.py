"""Style-mixing probe of a generator (weights file, registry name or training checkpoint.pt): for W+ band swaps,
the SFace cosine to the original and the landmark shift by YuNet (as `faceanonymixer model-report`: same seeds,
same functions, so its rows match the report's mixing rows), the part of that shift that moves the face as a whole
(the least-squares similarity transform of the 5 points: runs 9-11's `id_band_framing` term measured the same on
the faceplugin net's points), and the faceplugin 68-point net's shift (inner 51 points, runs 8's
`id_band_landmarks` term; those trainer options live at commit 1f56aad). Faster than the full report: no encoder, no real photos.

    python lab/probes/band_probe.py runs/gen_lm3/checkpoint.pt --n 128 --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from faceanonymixer.eval.embeddings import embed_ffhq
from faceanonymixer.eval.quality.generation import mix, parse_ranges, seed_ws, synth
from faceanonymixer.eval.quality.landmarks import detect_batch, pose_change
from faceanonymixer.fr import get_recogniser
from faceanonymixer.models.landmarks68 import Landmarks68, framing_shift
from faceanonymixer.models.loading import load_generator
from faceanonymixer.train.gan import export_generator

BANDS = "1-6,7-9,0,all"


def parse_band(text: str, num_ws: int) -> list[int]:
    """'1-6' / '0' / 'all' -> W+ layer indices (ranges as the model report's --mix-layers)."""
    if text == "all":
        return list(range(num_ws))
    (lo, hi), = parse_ranges(text)
    if hi >= num_ws:
        raise SystemExit(f"band {text!r}: layers must lie in 0..{num_ws - 1}")
    return list(range(lo, hi + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", help="weights file, registry name, or a trainer checkpoint.pt (its G_ema)")
    p.add_argument("--n", type=int, default=128, help="samples (seeds 0..n-1, partners n..2n-1; default 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bands", default=BANDS, help=f"comma-separated W+ bands to swap (default {BANDS})")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.generator
        if path.endswith(".pt"):
            path = str(export_generator(path, Path(tmp) / "G.safetensors"))
        G = load_generator(path)
    lm, sface = Landmarks68(), get_recogniser("sface")
    w, w_p = seed_ws(G, range(a.n)), seed_ws(G, range(a.n, 2 * a.n))
    x = synth(G, w)
    det0, e0 = detect_batch(x), embed_ffhq(sface, x)
    print("band | SFace cos | YuNet shift / IOD | of it, framing (shift, roll, scale) | faceplugin inner-51 shift / IOD"
          " | mixed detected")
    for name in a.bands.split(","):
        xm = synth(G, mix(w, w_p, parse_band(name, G.num_ws), G.num_ws))
        dm = detect_batch(xm)
        both = det0.found & dm.found
        cos = torch.nn.functional.cosine_similarity(e0, embed_ffhq(sface, xm), dim=1).mean().item()
        la, lb = (torch.from_numpy(v[both]) for v in (det0.lm, dm.lm))                  # [M,5,2] YuNet points
        framing = (framing_shift(la, lb) / (la[:, 0] - la[:, 1]).norm(dim=-1)).mean().item()
        with torch.no_grad():
            s68 = lm.image_shift(x, xm).mean().item()
        print(f"{name} | {cos:.3f} | {100 * pose_change(det0.lm[both], dm.lm[both]).mean():.1f} % | "
              f"{100 * framing:.1f} % | {100 * s68:.1f} % | {dm.rate:.2f}", flush=True)


if __name__ == "__main__":
    main()
