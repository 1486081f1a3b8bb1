"""``faceanonymixer train {generator,encoder,mixer}``: train (or resume) our embedded models, then export them."""
from __future__ import annotations

import logging

from .. import config as config_mod
from ..fileio import shown
from ..train.encoder import EncoderTrainConfig, EncoderTrainer, export_encoder
from ..train.gan import GeneratorTrainConfig, GeneratorTrainer, export_generator
from ..train.mixer import MixerTrainConfig, MixerTrainer, export_checkpoint

HELP = "train our embedded StyleGAN2 generator, its encoder or the feed-forward mixer (resumable; CPU or CUDA)"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("what", choices=["generator", "encoder", "mixer"], help="which model to train")
    p.add_argument("--config", help="YAML config (configs/train_generator.yaml, train_encoder.yaml or train_mixer.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--minutes", type=float, help="stop after this many minutes (checkpoint is written)")
    p.add_argument("--export", metavar="PATH", help="after training, export the weights (generator: EMA) as safetensors+JSON")


TRAINERS = {"generator": (GeneratorTrainConfig, GeneratorTrainer, export_generator),
            "encoder": (EncoderTrainConfig, EncoderTrainer, export_encoder),
            "mixer": (MixerTrainConfig, MixerTrainer, export_checkpoint)}


def run(args) -> int:
    overrides = list(args.set)
    if args.minutes is not None:
        overrides.append(f"max_minutes={args.minutes}")
    cfg_cls, trainer_cls, export = TRAINERS[args.what]
    trainer = trainer_cls(config_mod.load(cfg_cls, args.config, overrides))
    trainer.run()
    ckpt = trainer.out / "checkpoint.pt"
    print(f"trained the {args.what} to step {trainer.step}: checkpoint {shown(str(ckpt))} (the same command "
          "continues from it)")
    if args.export:
        export(ckpt, args.export)
        print(f"exported the {args.what} to {shown(args.export)}"
              + (" (EMA weights)" if args.what == "generator" else ""))
    return 0
