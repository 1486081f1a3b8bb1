"""Configuration of ``faceanonymixer evaluate``: the variants, the attack names, the linkage attack's settings and
``EvalConfig`` with its loader. Every step of the suite (protection.py, scoring.py, linkage.py, evaluate.py) reads
its settings from here; nothing here runs anything."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as cfgmod
from .. import fr
from ..config import ConfigError
from ..pipeline import ProtectConfig
from .attacks import ATTACKS, AttackConfig

KEYED = ("method", "naive", "method-code", "mixer")           # variants that use the Protector
# 'mixer': the feed-forward mixer (protect.engine 'mixer', models.mixer; every image protected alone)
KEYLESS = ("reconstruction", "lowres", "blur", "pixelate")    # deterministic transforms (no key)
ALL_VARIANTS = KEYED + KEYLESS
DEFAULT_VARIANTS = tuple(v for v in ALL_VARIANTS if v != "mixer")   # 'mixer' needs trained weights: opt-in

LINKAGE = "linkage"                           # the learned linkage attack (eval/linkage.py)
LINKAGE_SETTINGS = ("fixed", "per_person")    # its key settings


# --- the linkage attack (eval/linkage.py) ------------------------------------------------------------------
@dataclass
class LinkageConfig:
    data: str | None = None              # attacker identity folders; null = the evaluation's data folder
    split: str | None = "train"          # attacker people: 'train' split (disjoint from 'val' test people); null = all
    n_pairs: list[int] = field(default_factory=lambda: [100, 500])   # attacker pair counts N (nested sets)
    settings: list[str] = field(default_factory=lambda: list(LINKAGE_SETTINGS))
    images_per_person: int = 2           # attacker photos per attacker person (one joint protection session)
    variants: list[str] | None = None    # variants attacked; null = every evaluated variant
    teacher: str = "faceplugin-fr"       # gallery / target recogniser
    student: str = "faceplugin-fr"       # attacker's recogniser init, same size as teacher (white-box: both sface)
    lr: float = 3e-4                     # AdamW learning rate (converges on ours: docs/evaluation.md)
    weight_decay: float = 2e-2
    batch_size: int = 32
    max_epochs: int = 40
    patience: int = 6                    # early stopping: epochs without a better held-out loss
    holdout: float = 0.2                 # fraction of attacker people held out for early stopping / ridge strength
    w_l1: float = 10.0                   # weight of the L1 term on normalised embeddings
    w_triplet: float = 10.0              # weight of the triplet term
    margin: float = 0.3                  # triplet margin (L2 distance of normalised embeddings)
    flip: bool = True                    # random horizontal flips of the protected training images
    feature: bool = True                 # also the ridge-map variant (linkage_feature)
    LIMITS = dict(images_per_person=(1, 100), lr=(0.0, None), weight_decay=(0.0, None), batch_size=(2, 4096),
                  max_epochs=(0, 10_000), patience=(1, 10_000), holdout=(0.05, 0.9), margin=(0.0, None))


def check_linkage(lc: LinkageConfig) -> None:
    bad = [s for s in lc.settings if s not in LINKAGE_SETTINGS]
    if bad:
        raise ConfigError(f"linkage.settings: unknown setting(s) {bad}; valid: {list(LINKAGE_SETTINGS)}")
    if not lc.n_pairs or any(int(n) < 4 for n in lc.n_pairs):
        raise ConfigError(f"linkage.n_pairs must list pair counts >= 4, got {lc.n_pairs}")
    if lc.teacher not in fr.NAMES or lc.student not in fr.NAMES:
        raise ConfigError(f"linkage.teacher / linkage.student must be recognisers {list(fr.NAMES)}, "
                          f"got {lc.teacher!r} / {lc.student!r}")
    if lc.student not in fr.DIFFERENTIABLE:
        raise ConfigError(f"linkage.student {lc.student!r} is not differentiable and cannot be fine-tuned; choose one "
                          f"of {list(fr.DIFFERENTIABLE)} (and the same for linkage.teacher)")
    if fr.DIMS[lc.student] != fr.DIMS[lc.teacher]:
        raise ConfigError(
            f"linkage.student {lc.student!r} embeds in {fr.DIMS[lc.student]} dimensions but linkage.teacher "
            f"{lc.teacher!r} in {fr.DIMS[lc.teacher]}: the student is fine-tuned into the teacher's space, so both "
            f"must have the same size; for the white-box variant set both: --set linkage.teacher={lc.student} "
            f"--set linkage.student={lc.student}")


# --- the evaluation ----------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    data: str | None = None                   # identity folders <data>/<person>/<images>; null = $FACEANONYMIXER_LFW/images
    pairs: str | None = None                  # optional LFW pairs.txt (or CSV): genuine/impostor pairs from it
    out: str = "eval_report"                  # output folder (report.md, report.html, metrics.json, scores.csv)
    cache_dir: str | None = None              # protected-image cache (default <out>/cache)
    max_people: int = 100                     # people drawn (seeded) from those with >= min_images images
    min_images: int = 2
    split: str | None = None                  # 'val' = only people held out from training our embedded models
                                              # (train.data.person_split); 'train'; null = all people
    images_per_person: int = 3                # images used per person (seeded choice)
    seed: int = 0                             # pair sampling, people/image choice and evaluation keys
    n_impostor: int = 10000                   # impostor / non-mated pairs (all cross-person pairs if fewer)
    stolen_images: int = 2                    # images of the impostor protected with each victim's key
    recognisers: list[str] = field(default_factory=lambda: ["dlib-resnet", "faceplugin-fr", "sface"])
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    main_variant: str = "method"
    operating_fmr: float = 1e-2               # threshold of the protected system (revocability, stolen key)
    blur_sigma: float = 3.0                   # pixels at the generator resolution
    pixelate_block: int = 8
    protect: ProtectConfig = field(default_factory=ProtectConfig)  # the method (same section as configs/default.yaml);
                                              # 'naive' = the same with 0 steps, 'method-code' = mixing.assignment 'code'
    attacks: AttackConfig = field(default_factory=AttackConfig)
    linkage: LinkageConfig = field(default_factory=LinkageConfig)  # the 'linkage' attack (eval/linkage.py)
    soft_biometrics: bool = True              # gender/age agreement original vs protected (faceplugin SSR-Net)
    attack_recogniser: str = "auto"           # white-box net of the 'optimise' attack; auto = the method's loss network
    fid_inception: str | None = None          # Inception-v3 FID weights (official file); None = registry lookup
    sessions: str = "joint"                   # joint: a person's images optimised together (paper); separate: each
                                              # image alone, as enrol/verify protect them in deployment
    people_per_batch: int = 8                 # protection sessions run together in one batched pass
    device: str = "cpu"
    grid_people: int = 4
    threads: int = 0                          # torch threads (0 = leave as is)
    groups: str | None = None                 # per-group measures: 'utkface' (file-name labels) or a CSV
                                              # image,<grouping>[,...] (image = relative path, file or person name)
    groupings: list[str] | None = None        # groupings reported (null = every grouping of the labels)
    HASH_OMIT_DEFAULTS = ("groups", "groupings")   # opt-in: configs without them keep their hash and caches


ALL_ATTACKS = ATTACKS + (LINKAGE,)   # image attacks (eval/attacks.py) + the learned linkage attack


def selected_attacks(cfg) -> list[str]:
    """Attacks to run: ``attacks.names`` (an empty list = none); null = the image attacks of eval/attacks.py
    ('linkage' trains a network on extra protected images: it runs only when named)."""
    return list(ATTACKS) if cfg.attacks.names is None else list(cfg.attacks.names)


def load_config(path=None, overrides=None) -> EvalConfig:
    cfg = cfgmod.load(EvalConfig, path, overrides)
    unknown = [v for v in cfg.variants if v not in ALL_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; valid: {list(ALL_VARIANTS)}")
    bad = [a for a in selected_attacks(cfg) if a not in ALL_ATTACKS]
    if bad:
        raise ConfigError(f"unknown attack(s) {bad}; valid: {list(ALL_ATTACKS)}")
    check_linkage(cfg.linkage)
    lv = [v for v in (cfg.linkage.variants or []) if v not in cfg.variants]
    if lv:
        raise ConfigError(f"linkage.variants {lv} are not in variants {cfg.variants}")
    if cfg.sessions not in ("joint", "separate"):
        raise ConfigError(f"sessions must be 'joint' or 'separate', got '{cfg.sessions}'")
    if cfg.main_variant not in cfg.variants:
        raise ConfigError(f"main_variant '{cfg.main_variant}' is not in variants {cfg.variants}")
    return cfg
