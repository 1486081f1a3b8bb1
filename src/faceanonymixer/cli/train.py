"""``faceanonymixer train {generator,encoder,mixer}``: train (or resume) our embedded models, then export them."""
from __future__ import annotations

import logging

from .. import config as config_mod
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


def run(args) -> int:
    overrides = list(args.set)
    if args.minutes is not None:
        overrides.append(f"max_minutes={args.minutes}")
    if args.what == "generator":
        cfg = config_mod.load(GeneratorTrainConfig, args.config, overrides)
        trainer = GeneratorTrainer(cfg)
        trainer.run()
        if args.export:
            export_generator(trainer.out / "checkpoint.pt", args.export)
            print(f"exported generator to {args.export}")
    elif args.what == "mixer":
        cfg = config_mod.load(MixerTrainConfig, args.config, overrides)
        trainer = MixerTrainer(cfg)
        trainer.run()
        if args.export:
            export_checkpoint(trainer.out / "checkpoint.pt", args.export)
            print(f"exported mixer to {args.export}")
    else:
        cfg = config_mod.load(EncoderTrainConfig, args.config, overrides)
        trainer = EncoderTrainer(cfg)
        trainer.run()
        if args.export:
            export_encoder(trainer.out / "checkpoint.pt", args.export)
            print(f"exported encoder to {args.export}")
    return 0
