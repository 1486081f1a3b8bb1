"""``faceanonymixer train {generator,encoder,mixer,data}``: train (or resume) our embedded models, then export them;
``data`` only builds the aligned training caches."""
from __future__ import annotations

import logging

from .. import config as config_mod
from ..config import ConfigError
from ..fileio import shown
from ..train.encoder import EncoderTrainConfig, EncoderTrainer, export_encoder
from ..train.gan import GeneratorTrainConfig, GeneratorTrainer, export_generator
from ..train.mixer import MixerTrainConfig, MixerTrainer, export_checkpoint

HELP = ("train our embedded StyleGAN2 generator, its encoder or the feed-forward mixer (resumable; CPU or CUDA); "
        "'data' builds the aligned training cache")
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("what", choices=["generator", "encoder", "mixer", "data"],
                   help="which model to train; 'data': align and cache the config's data and flat_data, then stop")
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
    if args.what == "data":
        return _build_data(config_mod.load(GeneratorTrainConfig, args.config, overrides))
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


def _build_data(cfg: GeneratorTrainConfig) -> int:
    """Align and cache the 'train' photos of the config's identity folders and flat folder; print what each holds."""
    from ..train.data import cache_summary, expand_path, prepare_aligned, prepare_aligned_flat, resolve_data
    paths = []
    if cfg.data != "none":
        paths.append(("identity folders", prepare_aligned(resolve_data(expand_path(cfg.data, "data")), cfg.cache,
                                                          cfg.resolution, "train", cfg.max_images)))
    flat = expand_path(cfg.flat_data, "flat_data")
    if flat:
        paths.append(("flat folder", prepare_aligned_flat(flat, cfg.cache, cfg.resolution, "train",
                                                          expand_path(cfg.flat_manifest, "flat_manifest"),
                                                          cfg.max_images)))
    if not paths:
        raise ConfigError("no training data: data is 'none' and flat_data is not set; give --set flat_data=FOLDER "
                          "or identity folders with --set data=FOLDER")
    total = 0
    for what, path in paths:
        s = cache_summary(path)
        total += s["images"]
        failed = "unknown" if s["failed"] is None else s["failed"]
        print(f"{what}: {s['images']} aligned {cfg.resolution}x{cfg.resolution} photos, {failed} without a usable "
              f"face (listed in {path.stem}_failed.json) -> {shown(str(path))}")
    print(f"training photos in all: {total}")
    return 0
