"""Seconds per face for 1 and for N people protected at once, and the batched/serial throughput ratio,
measured side by side in one run on synthetic, already-aligned faces (no detection time).

    nice -n 10 .venv/bin/python benchmarks/bench_protect.py [--people 16] [--steps 50] [--config configs/default.yaml]
        [--tiny] [--device cuda]   # tiny random generator/encoder (when the embedded weights are absent)
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from faceanonymixer.keys import Key
from faceanonymixer.pipeline import Protector
from faceanonymixer.workflow import load_config


def tiny_protector(cfg):
    from faceanonymixer.models.e4e import E4EInverter, Encoder4Editing
    from faceanonymixer.models.stylegan2 import Generator
    torch.manual_seed(0)
    G = Generator(resolution=64, z_dim=64, w_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 32, 32: 16, 64: 16}).eval()
    G.compute_latent_avg(1000)
    enc = Encoder4Editing(n_styles=G.num_ws, input_size=64, units=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                          style_dim=64, style_hidden=16, stem_channels=8).eval()
    return Protector(cfg, generator=G, inverter=E4EInverter(enc, G.latent_avg))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--images", type=int, default=2, help="images per person")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", help="torch device (default: the config's models.device)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config).protect
    cfg.optim.steps = a.steps
    cfg.batch_people = a.people
    if a.device:
        cfg.models.device = a.device
    prot = tiny_protector(cfg) if a.tiny else Protector(cfg)
    G = prot.generator
    g = torch.Generator().manual_seed(0)
    z = torch.randn(a.people * a.images, G.z_dim, generator=g)
    with torch.no_grad():
        faces = prot.synthesise(G.truncate(G.mapping(z.to(prot.device)), 0.7)[:, None].repeat(1, G.num_ws, 1)).cpu()
    people = [list(faces[i * a.images:(i + 1) * a.images]) for i in range(a.people)]
    keys = [Key(bytes([i]) * 32) for i in range(a.people)]
    prot.protect_people(people[:1], keys[:1], steps=1)       # warm-up
    t = time.perf_counter()
    prot.protect_people(people[:1], keys[:1])
    one = time.perf_counter() - t
    t = time.perf_counter()
    for p, k in zip(people, keys):
        prot.protect_people([p], [k])
    serial = time.perf_counter() - t
    t = time.perf_counter()
    prot.protect_people(people, keys)
    batched = time.perf_counter() - t
    n = a.people * a.images
    res = dict(device=str(prot.device), threads=a.threads, steps=a.steps, images_per_person=a.images,
               people=a.people, s_per_face_1_person=round(one / a.images, 3),
               s_per_face_serial=round(serial / n, 3), s_per_face_batched=round(batched / n, 3),
               batched_over_serial_throughput=round(serial / batched, 2), tiny=a.tiny)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
