"""Engine 'mixer' (one feed-forward pass) against engine 'optimise' (the paper's 50-step optimisation): seconds
per face and the throughput ratio, measured side by side in one run on the same synthetic, already-aligned faces
(detection excluded), every face its own person (as `verify` protects a probe), ``--batch`` faces at once.

    nice -n 10 .venv/bin/python benchmarks/bench_mixer.py [--mixer FILE] [--faces 16] [--batch 16] [--steps 50]

Without --mixer an untrained mixer of the shipped architecture is used: the speed does not depend on its weights.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from faceanonymixer import mixer as mx
from faceanonymixer.keys import Key
from faceanonymixer.pipeline import Protector
from faceanonymixer.workflow import load_config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--mixer", help="mixer weights (default: an untrained mixer, same architecture)")
    ap.add_argument("--faces", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50, help="optimisation steps of engine 'optimise'")
    ap.add_argument("--repeats", type=int, default=3, help="mixer passes timed (median)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config).protect
    cfg = replace(cfg, batch_people=a.batch, optim=replace(cfg.optim, steps=a.steps))
    opt = Protector(cfg)
    G = opt.generator
    tmp = None
    path = a.mixer
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(0)
        m = mx.Mixer(G.num_ws, G.w_dim, G.z_dim, list(opt.plan.optimised_layers), hidden=512, depth=3, alpha=2.0)
        path = str(mx.export_mixer(m, Path(tmp.name) / "untrained.safetensors"))
    mcfg = replace(cfg, engine="mixer", models=replace(cfg.models, mixer=path))
    mix = Protector(mcfg, generator=G, inverter=opt.inverter, id_net=opt.id_net, attr_net=opt.attr)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(a.faces, G.z_dim, generator=g)
    with torch.no_grad():
        faces = opt.synthesise(G.truncate(G.mapping(z), 0.7)[:, None].repeat(1, G.num_ws, 1)).cpu()
    people = [[faces[i]] for i in range(a.faces)]
    keys = [Key(bytes([i + 1]) * 32) for i in range(a.faces)]
    mix.protect_people(people[:2], keys[:2])                  # warm-up
    opt.protect_people(people[:1], keys[:1], steps=1)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        mix.protect_people(people, keys)
        times.append(time.perf_counter() - t)
    t_mix = sorted(times)[len(times) // 2]
    t = time.perf_counter()
    opt.protect_people(people, keys)
    t_opt = time.perf_counter() - t
    res = dict(threads=a.threads, faces=a.faces, batch=a.batch, optimise_steps=a.steps,
               augment_copies=cfg.optim.augment_copies, mixer=a.mixer or "untrained (same architecture)",
               s_per_face_mixer=round(t_mix / a.faces, 4), s_per_face_optimise=round(t_opt / a.faces, 3),
               mixer_over_optimise_throughput=round(t_opt / t_mix, 1))
    print(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
