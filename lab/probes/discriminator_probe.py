"""Can the discriminator tell our generator's samples from real faces when G stands still? Trains D alone (same
optimiser, augmentation and data as `train generator`) against a frozen G from a resume file and prints D's
accuracy on augmented batches and its mean logits on clean ones. If D wins quickly here but sits at chance
(loss_D ~ 2 ln 2) during training, D has the capacity and the balance is the problem: G follows every D step.

    python lab/probes/discriminator_probe.py [--resume training/fam_stylegan2_64_resume.safetensors] [--steps 300]
"""
from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
import yaml

from faceanonymixer.train.gan import GeneratorTrainConfig, GeneratorTrainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/train_generator.yaml")
    ap.add_argument("--resume", default="training/fam_stylegan2_64_resume.safetensors")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    with open(a.config) as f:
        d = yaml.safe_load(f)
    fields = GeneratorTrainConfig.__dataclass_fields__
    with tempfile.TemporaryDirectory() as tmp:
        d.update(out=tmp, init_from=a.resume, threads=a.threads)
        t = GeneratorTrainer(GeneratorTrainConfig(**{k: v for k, v in d.items() if k in fields}))
        G, D = t.G.requires_grad_(False), t.D
        print("| D steps | loss_D (aug) | accuracy (aug) | D(real) clean | D(fake) clean |")
        print("|---|---|---|---|---|")
        for i in range(a.steps + 1):
            with torch.no_grad():
                fake = G.synthesis(t._ws(G), noise_mode="random")
            real = t._real_batch()
            df, dr = D(t._aug(fake)), D(t._aug(real))
            loss = F.softplus(df).mean() + F.softplus(-dr).mean()
            t.opt_D.zero_grad(set_to_none=True)
            loss.backward()
            t.opt_D.step()
            if i % a.every == 0:
                with torch.no_grad():
                    df0, dr0 = D(fake), D(real)
                acc = ((dr > 0).float().mean() + (df < 0).float().mean()).item() / 2
                print(f"| {i} | {loss.item():.3f} | {acc:.2f} | {dr0.mean().item():.2f} | {df0.mean().item():.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
