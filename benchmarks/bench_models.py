"""CPU/GPU speed of the embedded models, measured side by side in one run.

Prints generator and encoder forward time per image at batch 1 and 16, the loss network's (SFace) forward +
backward time per image at batch 1 and 16 and their ratio, and the ratio of a GAN training
step in bf16 autocast vs fp32 (why the trainer uses fp32 on CPU). Usage:
    python benchmarks/bench_models.py [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from faceanonymixer.models.encoders import load_inverter
    from faceanonymixer.models.loading import load_generator
    dev = torch.device(args.device)
    G = load_generator("fam-stylegan2-64").to(dev).eval()
    inv = load_inverter("fam-e4e-64", generator=G).to(dev)
    res = {"device": args.device, "threads": args.threads}
    with torch.no_grad():
        for b in (1, 16):
            ws = G.latent_avg.expand(b, G.num_ws, -1).contiguous().to(dev)
            x = torch.rand(b, 3, G.resolution, G.resolution, device=dev) * 2 - 1
            res[f"generator_ms_per_image_b{b}"] = 1000 * timeit(lambda: G.synthesis(ws), args.reps) / b
            res[f"encoder_ms_per_image_b{b}"] = 1000 * timeit(lambda: inv.encode(x), args.reps) / b
    # The loss network's forward + backward dominates an optimisation step of `protect`; whether it runs faster
    # per image in a batch bounds what batching people can gain on this device (benchmarks/bench_protect.py).
    from faceanonymixer.fr import get_recogniser
    sface = get_recogniser("sface", device=str(dev))
    for b in (1, 16):
        y = (torch.rand(b, 3, G.resolution, G.resolution, device=dev) * 2 - 1).requires_grad_(True)
        res[f"sface_fwd_bwd_ms_per_image_b{b}"] = 1000 * timeit(lambda: sface.embed_ffhq(y).sum().backward(),
                                                                args.reps) / b
    res["sface_batch16_speedup_per_image"] = res["sface_fwd_bwd_ms_per_image_b1"] / res["sface_fwd_bwd_ms_per_image_b16"]
    # Training step: bf16 autocast vs fp32 on the same model and data.
    from faceanonymixer.train.gan import GeneratorTrainConfig, GeneratorTrainer
    import tempfile
    imgs = np.random.default_rng(0).integers(0, 255, (64, G.resolution, G.resolution, 3), dtype=np.uint8)
    for amp in (False, True):
        with tempfile.TemporaryDirectory() as d:
            tr = GeneratorTrainer(GeneratorTrainConfig(out=d, amp=amp, r1_every=10 ** 9, device=args.device), images=imgs)
            if amp and dev.type == "cpu":  # the trainer only autocasts on CUDA; force it here to measure the CPU case
                tr._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
            res[f"train_img_per_s_{'bf16' if amp else 'fp32'}"] = tr.cfg.batch / timeit(tr.train_step, 2)
    res["train_speed_ratio_fp32_over_bf16"] = res["train_img_per_s_fp32"] / res["train_img_per_s_bf16"]
    for k, v in res.items():
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
