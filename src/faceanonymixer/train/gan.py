"""StyleGAN2 trainer for our embedded generator (``faceanonymixer train generator``).

Non-saturating logistic loss, lazy R1 on reals, style-mixing regularisation, EMA of G, x-flip plus
DiffAugment (few thousand images), channels_last, bf16 autocast + TF32 on CUDA (fp32 on CPU, where our
bf16 path measured 1.5x slower: benchmarks/bench_models.py).
The recogniser terms on G (identity diversity, identity band) live in ``identity_loss.py``.
Checkpoints are written atomically and often, and a resumed run continues *exactly* (all RNG states and
the optimiser states are saved), so training can go on across sessions and machines."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.io import load_meta, load_state, save_model
from ..models.loading import load_generator
from ..models.stylegan2 import Discriminator, Generator
from ..tensors import from_uint8
from .augment import diff_augment
from .checkpoint import config_snapshot, write_checkpoint
from .data import training_images
from .grid import save_grid
from .identity_loss import IdentityLoss

log = logging.getLogger(__name__)


@dataclass
class GeneratorTrainConfig:
    data: str | None = None                         # identity folders <data>/<person>/<images> ('train' people are
                                                    # used); None = $FACEANONYMIXER_LFW/images (train.data.resolve_data)
    cache: str = "runs/data"                        # aligned-image cache folder
    flat_data: str | None = None                    # a flat folder of photos without identities (e.g. UTKFace) added to
                                                    # `data`; "$VAR" is expanded; data: none = flat_data alone
    flat_manifest: str | None = None                # CSV (file,split) naming flat_data's usable photos; None = split
                                                    # by content hash (train.data.content_split)
    out: str = "runs/generator"                     # checkpoints, samples, log
    resolution: int = 64                            # output side (power of two)
    channels: dict = field(default_factory=lambda: {4: 256, 8: 256, 16: 128, 32: 64, 64: 32})  # G channels per resolution
    d_channels: dict = field(default_factory=lambda: {4: 256, 8: 128, 16: 128, 32: 64, 64: 32})  # D channels per resolution
    z_dim: int = 512                                # latent z size
    w_dim: int = 512                                # W size
    n_mlp: int = 8                                  # mapping layers
    batch: int = 32                                 # images per step
    lr: float = 0.0025                              # Adam lr for G (and D unless d_lr)
    d_lr: float | None = None                       # Adam lr for D (None = lr); > lr = two time-scale update
    betas: tuple = (0.0, 0.99)                      # Adam betas
    r1_gamma: float = 0.2                           # R1 weight (small images -> small gamma)
    r1_every: int = 16                              # lazy regularisation interval
    style_mixing: float = 0.9                       # probability of a mixing cut-off per sample batch
    ema_kimg: float = 10.0                          # EMA half-life in thousands of images
    ema_rampup: float = 0.05                        # EMA ramp-up (fraction of images seen)
    augment: str = "color,translation,cutout"       # DiffAugment policy applied to D inputs ('' = off)
    xflip: bool = True                              # random horizontal flips of reals
    total_kimg: float = 100000.0                    # stop after this many thousand images ...
    max_minutes: float | None = None                # ... or after this many minutes of this run
    checkpoint_minutes: float = 5.0                 # write checkpoint.pt at least this often
    sample_kimg: float = 20.0                       # write a sample grid every this many kimg
    seed: int = 0                                   # seeds every random choice of the run
    device: str = "auto"                            # 'auto' | 'cpu' | 'cuda'
    amp: bool = True                                # bf16 autocast on CUDA (on CPU it measured 1.5x slower with our ops: fp32 there)
    channels_last: bool = True                      # NHWC memory format
    threads: int | None = None                      # torch CPU threads (None = torch default)
    identity_layers: list | None = None             # mixing band written into the exported weights' meta
                                                    # (measured per model: docs/method.md); None = scaling rule
    key_psi: float | None = None                    # key-code truncation written into the exported weights' meta
                                                    # (measured per model: docs/method.md); None = 0.7
    id_diversity: float = 0.0                       # weight of the identity-diversity term (0 = off): penalises the
                                                    # recogniser cosine between samples of unrelated z above a margin
    id_diversity_every: int = 4                     # lazy: both recogniser terms every this many steps (weights scaled up)
    id_diversity_images: int = 8                    # samples per evaluation of the terms (all pairs in the diversity term)
    id_diversity_margin: float = 0.2                # pairs below this cosine cost nothing (real different people: ~0.1)
    id_band: float = 0.0                            # weight of the identity-band term (0 = off): penalises the recogniser
                                                    # cosine between a sample and the same sample with its mixing band
                                                    # (identity_layers) taken from an unrelated z, so identity lives there
    id_band_margin: float = 0.1                     # band-swapped pairs below this cosine cost nothing
    id_noise: str = "random"                        # noise of the recogniser terms' samples: 'const' makes w alone carry
                                                    # identity (random noise alone moved SFace cos to 0.53, docs/models.md)
    id_band_psi: float = 1.0                        # truncation of both codes of that term (the model report measures
                                                    # the band at psi 0.7, where samples are more alike)
    id_band_pose: float = 0.0                       # weight keeping the band swap's coarse layout: MSE of the 8x8
                                                    # standardised grey images of sample and swap (pose proxy)
    max_images: int | None = None                   # cap on real images (tests)
    init_from: str | None = None                    # no checkpoint.pt yet: start from this resume file (G + D, see
                                                    # export_resume) and G_ema from `init_ema`; Adam moments restart
    init_ema: str = "fam-stylegan2-64"              # generator weights (registry name or file) used as G_ema with init_from
                                                    # when the resume file has no G_ema of its own


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_models(cfg: GeneratorTrainConfig):
    ch = {int(k): int(v) for k, v in cfg.channels.items()}
    dch = {int(k): int(v) for k, v in cfg.d_channels.items()}
    G = Generator(resolution=cfg.resolution, z_dim=cfg.z_dim, w_dim=cfg.w_dim, n_mlp=cfg.n_mlp, channels=ch)
    D = Discriminator(resolution=cfg.resolution, channels=dch)
    return G, D


class GeneratorTrainer:
    """Holds models, optimisers and every RNG; ``run()`` trains until a limit and checkpoints."""

    def __init__(self,
                 cfg: GeneratorTrainConfig,               # the run's settings
                 images: np.ndarray | None = None):       # uint8 [N,R,R,3] aligned photos; None = cfg.data's cache
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.G, self.D = build_models(cfg)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
        for m in (self.G, self.D, self.G_ema):
            m.to(self.device, memory_format=mf)
        c = cfg.r1_every / (cfg.r1_every + 1)  # lazy-regularisation correction of lr and betas
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        d_lr = cfg.lr if cfg.d_lr is None else cfg.d_lr
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr * c, betas=tuple(b ** c for b in cfg.betas))
        self.rng = torch.Generator().manual_seed(cfg.seed)  # z, mixing, flips, augmentation, data order
        self.step = 0
        self.images_seen = 0
        self.history: list[dict] = []
        self.identity = None if cfg.id_diversity <= 0 and cfg.id_band <= 0 else IdentityLoss(
            self.G, self.device, images=cfg.id_diversity_images, diversity=cfg.id_diversity,
            diversity_margin=cfg.id_diversity_margin, band=cfg.id_band, band_layers=cfg.identity_layers,
            band_margin=cfg.id_band_margin, band_psi=cfg.id_band_psi, band_pose=cfg.id_band_pose, noise=cfg.id_noise)
        self._id_stats: dict = {}
        self.real = self._load_data(images)
        self.sample_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(12345))
        self._resume()

    # --- data ---------------------------------------------------------------------------------------
    def _load_data(self, images: np.ndarray | None) -> np.ndarray:
        """uint8 [N,R,R,3], kept compact; batches are converted when drawn."""
        if images is None:
            images, _ = training_images(self.cfg.data, self.cfg.cache, self.cfg.resolution, self.cfg.flat_data,
                                        self.cfg.flat_manifest, self.cfg.max_images)
        assert images.ndim == 4 and images.shape[1:] == (self.cfg.resolution, self.cfg.resolution, 3), images.shape
        log.info("training images: %d", images.shape[0])
        return np.ascontiguousarray(images)

    def _real_batch(self) -> torch.Tensor:
        idx = torch.randint(0, self.real.shape[0], (self.cfg.batch,), generator=self.rng)
        x = from_uint8(self.real[idx.numpy()])
        if self.cfg.xflip:
            flip = torch.rand(self.cfg.batch, generator=self.rng) < 0.5
            x[flip] = x[flip].flip(3)
        return x.to(self.device).contiguous(memory_format=torch.channels_last if self.cfg.channels_last
                                            else torch.contiguous_format)

    # --- steps --------------------------------------------------------------------------------------
    def _z(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch, self.cfg.z_dim, generator=self.rng).to(self.device)

    def _ws(self, G: Generator) -> torch.Tensor:
        """Mapped W+ with style mixing: one cut-off per batch, layers >= cut take a second latent."""
        w = G.mapping(self._z())
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        if torch.rand((), generator=self.rng).item() < self.cfg.style_mixing:
            cut = int(torch.randint(1, G.num_ws, (), generator=self.rng))
            ws2 = G.mapping(self._z()).unsqueeze(1)
            ws = torch.cat([ws[:, :cut], ws2.expand(-1, G.num_ws - cut, -1)], dim=1)
        return ws

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.augment, self.rng) if self.cfg.augment else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp and self.device.type == "cuda")

    def train_step(self) -> dict:
        cfg, G, D = self.cfg, self.G, self.D
        stats = {}
        # D: logistic loss on fakes and reals.
        with self._autocast():
            with torch.no_grad():
                fake = G.synthesis(self._ws(G), noise_mode="random")
            real = self._real_batch()
            d_fake = D(self._aug(fake.detach()))
            d_real = D(self._aug(real))
            loss_D = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.float().backward()
        self.opt_D.step()
        stats["loss_D"] = float(loss_D.detach())
        stats["D_real"] = float(d_real.detach().float().mean())
        stats["D_fake"] = float(d_fake.detach().float().mean())
        # Lazy R1 on (augmented) reals, in float32: the gradient penalty is precision-sensitive.
        if self.step % cfg.r1_every == 0 and cfg.r1_gamma > 0:
            real = self._real_batch().detach().requires_grad_(True)
            out = D(self._aug(real))
            (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
            r1 = grad.float().square().sum(dim=[1, 2, 3]).mean()
            self.opt_D.zero_grad(set_to_none=True)
            (r1 * (cfg.r1_gamma / 2) * cfg.r1_every + out.mean() * 0).backward()
            self.opt_D.step()
            stats["r1"] = float(r1.detach())
        # G: non-saturating loss with style mixing.
        with self._autocast():
            fake = G.synthesis(self._ws(G), noise_mode="random")
            loss_G = F.softplus(-D(self._aug(fake))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.float().backward()
        self.opt_G.step()
        stats["loss_G"] = float(loss_G.detach())
        if self.identity is not None:
            if self.step % cfg.id_diversity_every == 0:
                self._id_stats = self._identity_step()
            stats.update(self._id_stats)                     # last values, so that the sparse log shows them
        self._update_ema()
        self.step += 1
        self.images_seen += cfg.batch
        return stats

    def _identity_step(self) -> dict:
        """Lazy regularisation step of G with the recogniser terms (identity_loss.py), weight x the interval."""
        loss, stats = self.identity(self.rng)
        self.opt_G.zero_grad(set_to_none=True)
        (loss * self.cfg.id_diversity_every).backward()
        self.opt_G.step()
        return stats

    @torch.no_grad()
    def _update_ema(self):
        cfg = self.cfg
        half_life = cfg.ema_kimg * 1000
        if cfg.ema_rampup:
            half_life = min(half_life, self.images_seen * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(half_life, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p.detach(), 1 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict:
        return dict(G=self.G.state_dict(), D=self.D.state_dict(), G_ema=self.G_ema.state_dict(),
                    opt_G=self.opt_G.state_dict(), opt_D=self.opt_D.state_dict(), step=self.step,
                    images_seen=self.images_seen, rng=self.rng.get_state(), torch_rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    config=config_snapshot(self.cfg),
                    history=self.history)

    def save_checkpoint(self) -> Path:
        return write_checkpoint(self.out, self.state())

    def _resume(self):
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            if self.cfg.init_from:
                self._init_from(self.cfg.init_from)
            return
        st = torch.load(path, map_location="cpu", weights_only=True)
        self.G.load_state_dict(st["G"])
        self.D.load_state_dict(st["D"])
        self.G_ema.load_state_dict(st["G_ema"])
        self.opt_G.load_state_dict(st["opt_G"])
        self.opt_D.load_state_dict(st["opt_D"])
        self.step, self.images_seen = st["step"], st["images_seen"]
        self.rng.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.history = list(st.get("history", []))
        log.info("resumed from %s at %.1f kimg", path, self.images_seen / 1000)

    def _init_from(self, path: str):
        """Continue a run from a committed resume file (fp16 G + D) and the shipped G_ema."""
        state, _ = load_state(path)
        meta = load_meta(path)
        self.G.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("G.")})
        self.D.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("D.")})
        ema = {k[6:]: v for k, v in state.items() if k.startswith("G_ema.")}
        if ema:                                      # the file's own EMA (export_resume(with_ema=True))
            self.G_ema.load_state_dict(ema)
        else:
            self.G_ema.load_state_dict(load_generator(self.cfg.init_ema).state_dict())
        self.step, self.images_seen = int(meta.get("steps", 0)), int(meta.get("trained_images", 0))
        log.info("initialised from %s at %.1f kimg (optimiser moments restart)", path, self.images_seen / 1000)

    # --- samples ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, path: Path, psi: float = 0.7):
        G = self.G_ema
        w_avg = G.mapping(torch.randn(2000, self.cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(self.device)).mean(0)
        w = G.mapping(self.sample_z.to(self.device))
        w = w_avg + psi * (w - w_avg)
        imgs = torch.cat([G.synthesis(w[i:i + 16].unsqueeze(1).repeat(1, G.num_ws, 1), noise_mode="const")
                          for i in range(0, 64, 16)])
        save_grid(imgs.float().cpu(), path, nrow=8)

    # --- loop ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.time()
        t_ckpt = time.time()
        next_sample = (math.floor(self.images_seen / 1000 / cfg.sample_kimg) + 1) * cfg.sample_kimg
        t_log, n_log = time.time(), 0
        stats = {}
        logf = open(self.out / "log.jsonl", "a")
        stop = _stop_on_sigterm()
        while self.images_seen < cfg.total_kimg * 1000:
            if stop or (cfg.max_minutes is not None and time.time() - t_start > cfg.max_minutes * 60):
                break
            stats = self.train_step()
            n_log += cfg.batch
            if self.step % 50 == 0:
                dt = time.time() - t_log
                rec = dict(step=self.step, kimg=round(self.images_seen / 1000, 3), img_s=round(n_log / dt, 1), **stats)
                self.history.append(rec)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
                t_log, n_log = time.time(), 0
            if self.images_seen / 1000 >= next_sample:
                self.sample_grid(self.out / f"samples_{int(self.images_seen / 1000):06d}kimg.png")
                next_sample += cfg.sample_kimg
            if time.time() - t_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                t_ckpt = time.time()
        self.save_checkpoint()
        self.sample_grid(self.out / "samples_latest.png")
        logf.close()
        return stats


@torch.no_grad()
def compute_latent_avg(G: Generator, n: int = 10000, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    dev = next(G.parameters()).device
    return torch.cat([G.mapping(z[i:i + 1000].to(dev)) for i in range(0, n, 1000)]).mean(0).cpu()


def export_generator(checkpoint: str | Path, out_path: str | Path, fp16: bool = True,
                     identity_layers: list[int] | None = None, key_psi: float | None = None) -> Path:
    """Write G_ema of a training checkpoint as our safetensors + JSON (with latent_avg set). The mixing band
    ``identity_layers`` and key truncation ``key_psi`` (else the checkpoint config's) go into the meta, where the
    pipeline reads them."""
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = GeneratorTrainConfig(**{k: v for k, v in st["config"].items() if k in
                                  {f.name for f in dataclasses.fields(GeneratorTrainConfig)}})
    G, _ = build_models(cfg)
    G.load_state_dict(st["G_ema"])
    G.eval()
    G.latent_avg.copy_(compute_latent_avg(G))
    meta = dict(kind="stylegan2", trained_images=int(st["images_seen"]), steps=int(st["step"]),
                data="LFW (train split of people, FFHQ-aligned by faceanonymixer.align)")
    band = identity_layers if identity_layers is not None else cfg.identity_layers
    if band is not None:
        meta["identity_layers"] = sorted(int(i) for i in band)
    psi = key_psi if key_psi is not None else getattr(cfg, "key_psi", None)
    if psi is not None:
        meta["key_psi"] = float(psi)
    save_model(G, out_path, G.config, meta, fp16=fp16)
    return Path(out_path)


def export_resume(checkpoint: str | Path, out_path: str | Path, with_ema: bool = False) -> Path:
    """Compact resume file (fp16 G + D, ~16 MB) to commit beside the shipped G_ema, so a later session (or a GPU
    run) can continue training with ``init_from``; the full checkpoint.pt (with Adam moments) is ~120 MB.
    ``with_ema`` adds the run's own G_ema (+11 MB): needed when the shipped generator is not this run's G_ema
    (an EMA restarted from another trajectory blends two generators' weights)."""
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {f"G.{k}": v for k, v in st["G"].items()} | {f"D.{k}": v for k, v in st["D"].items()}
    if with_ema:
        state |= {f"G_ema.{k}": v for k, v in st["G_ema"].items()}
    meta = dict(kind="stylegan2-resume", trained_images=int(st["images_seen"]), steps=int(st["step"]))
    save_model(state, out_path, st["config"], meta, fp16=True)
    return Path(out_path)


def _stop_on_sigterm() -> list:
    """SIGTERM/SIGINT end the run cleanly (checkpoint written) instead of losing the work since the last one."""
    flag: list = []

    def handler(signum, frame):
        flag.append(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a test runner's worker): keep the default
            pass
    return flag
