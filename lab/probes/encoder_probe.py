"""Quick encoder probe (1-2 min): SFace and faceplugin-fr cos(original, reconstruction) and PSNR on held-out LFW faces.

    python lab/probes/encoder_probe.py ENCODER [--n 256] [--generator fam-stylegan2-64] [--split val]

ENCODER: registry name, our weights file, or an encoder training checkpoint (checkpoint.pt, exported on the fly).
Faces: the aligned cache of the split (made by the trainers / model-report under --cache), 512 drawn with seed 0,
the first n used, so runs with the same n compare the same faces. `model-report` is the full measurement."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("encoder")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--generator", default="fam-stylegan2-64")
    p.add_argument("--split", default="val")
    p.add_argument("--data", default="../shared/data/lfw/images")
    p.add_argument("--cache", default="runs/data")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from faceanonymixer.fr import get_recogniser
    from faceanonymixer.models.encoders import load_inverter
    from faceanonymixer.models.loading import load_generator
    from faceanonymixer.train.data import load_aligned, prepare_aligned
    G = load_generator(a.generator).eval()
    enc = a.encoder
    if enc.endswith(".pt"):
        from faceanonymixer.train.encoder import export_encoder
        enc = str(export_encoder(enc, Path(tempfile.mkdtemp()) / "probe.safetensors"))
    inv = load_inverter(enc, generator=G)
    imgs, _ = load_aligned(prepare_aligned(a.data, a.cache, G.resolution, a.split))
    idx = np.random.RandomState(0).choice(len(imgs), min(512, len(imgs)), replace=False)[:a.n]
    x = torch.from_numpy(imgs[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = dict(encoder=a.encoder, n=len(idx), split=a.split)
    with torch.no_grad():
        y = torch.cat([G.synthesis(inv.encode(x[i:i + 32]), noise_mode="const").clamp(-1, 1)
                       for i in range(0, len(x), 32)])
        for name in ("sface", "faceplugin-fr"):
            r = get_recogniser(name)
            out[name] = round(float((r.embed_ffhq(x) * r.embed_ffhq(y)).sum(1).mean()), 3)
        out["psnr_db"] = round(float((10 * torch.log10(4 / ((x - y) ** 2).mean((1, 2, 3)))).mean()), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
