"""e4e-style encoder trainer for our embedded generator (``faceanonymixer train encoder``).

Each batch mixes generator samples (their W+ is known: latent loss + pixel + identity) and real FFHQ-aligned
photos of the 'train' people (pixel + identity), as e4e/pSp do, with e4e's delta regulariser that keeps the
per-layer offsets small (codes stay editable, i.e. near W). The generator is frozen; gradients flow through
it. Identity loss = 1 - cos in SFace space (the loss network; evaluation uses other recognisers).

With ``id_head`` the encoder also gets an identity head (``models.id_head``): SFace's embedding of the input ->
W+ offsets. ``train: id_head`` trains the head alone on top of a frozen body (``init_from``): the body's codes and
the embeddings of the real photos are then computed once and cached in the output folder (real photos are not
flipped in this mode: the cache holds the unflipped codes)."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointFormatError
from ..fileio import atomic_write
from ..fr import get_recogniser
from ..models.e4e import E4EInverter
from ..models.encoders import build_encoder, build_id_head, pop_id_head_state
from ..models.io import load_state, save_model
from ..models.loading import load_generator
from ..registry import locate
from ..tensors import from_uint8
from .checkpoint import config_snapshot, write_checkpoint
from .data import training_images
from .gan import _stop_on_sigterm, resolve_device
from .grid import save_grid

log = logging.getLogger(__name__)


@dataclass
class EncoderTrainConfig:
    generator: str = "fam-stylegan2-64"              # registry name or weights file of the (frozen) generator
    data: str | None = None                          # identity folders <data>/<person>/<images> ('train' people are
                                                     # used); None = $FACEANONYMIXER_LFW/images (train.data.resolve_data)
    cache: str = "runs/data"                         # aligned-image cache (shared with the generator trainer)
    flat_data: str | None = None                     # a flat folder of photos without identities (e.g. UTKFace) added to
                                                     # `data`; "$VAR" is expanded; data: none = flat_data alone
    flat_manifest: str | None = None                 # CSV (file,split) naming flat_data's usable photos; None = split
                                                     # by content hash (train.data.content_split)
    out: str = "runs/encoder"                        # checkpoints, samples, log
    encoder: dict = field(default_factory=lambda: dict(   # Encoder4Editing kwargs (n_styles is taken from G)
        input_size=128, units=[2, 3, 4, 2], channels=[32, 64, 128, 256], style_hidden=128))
    batch: int = 16                                  # images per step (half synthetic, half real by default)
    synthetic_fraction: float = 0.5                  # share of generator samples in a batch
    psi_range: tuple = (0.5, 1.0)                    # truncation range of the synthetic samples
    lr: float = 3e-4                                 # Adam lr
    lambda_latent: float = 1.0                       # W+ MSE on synthetic samples
    lambda_pix: float = 1.0                          # pixel MSE + L1
    lambda_id: float = 0.5                           # 1 - cos(SFace) between input and reconstruction
    id_images: int = 8                               # images of the batch (spread over both halves) in the id loss
    lambda_delta: float = 2e-4                       # e4e delta regulariser (offsets from w_0)
    total_steps: int = 1_000_000                     # stop after this many steps ...
    max_minutes: float | None = None                 # ... or this many minutes of this run
    checkpoint_minutes: float = 5.0                  # checkpoint at least this often
    sample_steps: int = 500                          # reconstruction grid every this many steps
    seed: int = 0                                    # seeds every random choice of the run
    device: str = "auto"                             # 'auto' | 'cpu' | 'cuda'
    amp: bool = True                                 # bf16 autocast on CUDA (fp32 on CPU, where bf16 is slower)
    threads: int | None = None                       # torch CPU threads (None = torch default)
    max_images: int | None = None                    # cap on real images (tests)
    init_from: str | None = None                     # no checkpoint.pt yet: start from these encoder weights
                                                     # (our safetensors, e.g. the shipped fam-e4e-64); Adam restarts
    id_head: dict | None = None                      # IdentityHead kwargs (layers, hidden, id_net); None: no head
    train: str = "all"                               # "all": body (+ head) learn; "id_head": the head alone


class EncoderTrainer:
    """Holds the frozen generator, the encoder (+ identity head), the optimiser and the RNG; ``run()`` trains."""

    def __init__(self,
                 cfg: EncoderTrainConfig,                 # the run's settings
                 images: np.ndarray | None = None,        # uint8 [N,R,R,3] aligned photos; None = cfg.data's cache
                 generator=None,                          # frozen Generator; None = load cfg.generator
                 id_net=None):                            # identity-loss Recogniser; None = SFace
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        G = generator if generator is not None else load_generator(cfg.generator)
        self.G = G.to(self.device).eval().requires_grad_(False)
        enc_cfg = dict(cfg.encoder, n_styles=G.num_ws, style_dim=G.w_dim)
        self.enc_config = enc_cfg
        self.E = build_encoder(enc_cfg).to(self.device)
        if id_net is None:
            id_net = get_recogniser("sface", device=str(self.device))
        self.id_net = id_net
        if cfg.train not in ("all", "id_head"):
            raise ValueError(f"train must be 'all' or 'id_head', got {cfg.train!r}")
        if cfg.train == "id_head" and not cfg.id_head:
            raise ValueError("train: id_head needs an id_head config (e.g. {layers: [1, 2, 3, 4, 5, 6]})")
        self.head, self.head_net = None, None
        if cfg.id_head:
            self.head = build_id_head(dict(cfg.id_head, w_dim=G.w_dim)).to(self.device)
            assert max(self.head.layers) < G.num_ws, (self.head.layers, G.num_ws)
            self.head_net = id_net if self.head.id_net == "sface" else get_recogniser(self.head.id_net,
                                                                                        device=str(self.device))
        self.inv = E4EInverter(self.E, G.latent_avg.detach().cpu(), id_head=self.head,
                               id_net=self.head_net).to(self.device)
        if cfg.train == "id_head":
            self.E.requires_grad_(False)
            params = list(self.head.parameters())
        else:
            params = list(self.E.parameters()) + (list(self.head.parameters()) if self.head is not None else [])
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.real = self._load_data(images)
        self._resume()
        self.cache = self._frozen_cache() if cfg.train == "id_head" else None
        # fixed images for the reconstruction grid
        g = torch.Generator().manual_seed(7)
        self.fixed_real = self._to_float(self.real[torch.randint(0, self.real.shape[0], (8,), generator=g).numpy()])

    def _load_data(self, images) -> np.ndarray:
        """uint8 [N,R,R,3], kept compact; batches are converted when drawn."""
        if images is None:
            images, _ = training_images(self.cfg.data, self.cfg.cache, self.G.resolution, self.cfg.flat_data,
                                        self.cfg.flat_manifest, self.cfg.max_images)
        R = self.G.resolution
        assert images.ndim == 4 and images.shape[1:] == (R, R, 3), images.shape
        return np.ascontiguousarray(images)

    def _to_float(self, x_u8: np.ndarray) -> torch.Tensor:  # uint8 [N,R,R,3] -> [N,3,R,R] in [-1,1] on the device
        return from_uint8(x_u8).to(self.device)

    @torch.no_grad()
    def _synthetic(self, n):
        G = self.G
        z = torch.randn(n, G.z_dim, generator=self.rng).to(self.device)
        lo, hi = self.cfg.psi_range
        psi = (torch.rand(n, 1, generator=self.rng) * (hi - lo) + lo).to(self.device)
        w = G.mapping(z)
        w = G.latent_avg + psi * (w - G.latent_avg)
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        if n > 1 and torch.rand((), generator=self.rng).item() < 0.5:   # style-mixed codes: the encoder must handle W+
            cut = int(torch.randint(1, G.num_ws, (), generator=self.rng))
            ws[:, cut:] = ws.roll(1, dims=0)[:, cut:]
        return G.synthesis(ws, noise_mode="const").float().clamp(-1, 1), ws

    def _real_batch(self, n):
        idx = torch.randint(0, self.real.shape[0], (n,), generator=self.rng)
        x = self._to_float(self.real[idx.numpy()])
        if self.cache is not None:  # frozen body: cached codes of the unflipped photos
            return x, self.cache["codes"][idx].to(self.device).float(), self.cache["emb"][idx].to(self.device)
        flip = (torch.rand(n, generator=self.rng) < 0.5).to(self.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x), None, None

    def _body(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,R,R] -> body offsets [N,num_ws,w_dim]
        return self.E(F.interpolate(x, size=self.E.input_size, mode="bilinear", align_corners=False)
                      if x.shape[-1] != self.E.input_size else x)

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.E.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def _frozen_cache(self) -> dict:
        """Body codes + head-recogniser embeddings of every real photo, for ``train: id_head`` (the body is
        frozen, so they never change; computing them once makes a step ~3x cheaper on a CPU)."""
        path = self.out / "frozen_cache.pt"
        fp = self._fingerprint()
        if path.is_file():
            c = torch.load(path, map_location="cpu", weights_only=True)
            if c.get("fingerprint") == fp and c["codes"].shape[0] == self.real.shape[0]:
                return c
        self.E.eval()
        codes, emb = [], []
        t0 = time.time()
        for i in range(0, self.real.shape[0], 32):
            x = self._to_float(self.real[i:i + 32])
            codes.append(self._body(x).float().half().cpu())
            emb.append(self.head_net.embed_ffhq(x).float().cpu())
        c = dict(codes=torch.cat(codes), emb=torch.cat(emb), fingerprint=fp)
        atomic_write(path, lambda f: torch.save(c, f))
        log.info("cached the frozen body's codes of %d photos in %.0f s", self.real.shape[0], time.time() - t0)
        return c

    def losses(self, x: torch.Tensor, ws_true: torch.Tensor | None, n_syn: int,
               base: torch.Tensor | None = None,   # [N,num_ws,w_dim] body offsets (frozen body), else computed
               emb: torch.Tensor | None = None) -> dict:  # [N,emb_dim] head-recogniser embedding of x, or None
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp and self.device.type == "cuda"):
            deltas = self._body(x) if base is None else base
            if self.head is not None:
                if emb is None:
                    with torch.no_grad():
                        emb = self.head_net.embed_ffhq(x)
                deltas = self.head.add_to(deltas.float(), emb.float())
            ws = deltas.float() + self.inv.latent_avg.unsqueeze(0)
            y = self.G.synthesis(ws, noise_mode="const").float()
        out = {}
        out["pix"] = F.mse_loss(y, x) + F.l1_loss(y, x)
        k = min(cfg.id_images, x.shape[0])  # the recogniser dominates the step's cost: use a subset
        sel = torch.linspace(0, x.shape[0] - 1, k).round().long()
        if emb is not None and self.head_net is self.id_net:
            e_x = emb[sel].float()
        else:
            with torch.no_grad():
                e_x = self.id_net.embed_ffhq(x[sel])
        cos = (self.id_net.embed_ffhq(y[sel]) * e_x).sum(1)
        out["id"] = (1 - cos).mean()
        out["delta"] = (deltas[:, 1:] - deltas[:, :1]).float().norm(dim=2).mean()
        out["latent"] = F.mse_loss(ws[:n_syn], ws_true) if n_syn > 0 else torch.zeros((), device=x.device)
        out["total"] = (cfg.lambda_pix * out["pix"] + cfg.lambda_id * out["id"] + cfg.lambda_delta * out["delta"]
                        + cfg.lambda_latent * out["latent"])
        return out

    def train_step(self) -> dict:
        cfg = self.cfg
        n_syn = int(round(cfg.batch * cfg.synthetic_fraction))
        parts, bases, embs, ws_true = [], [], [], None
        frozen = cfg.train == "id_head"
        if n_syn:
            xs, ws_true = self._synthetic(n_syn)
            parts.append(xs)
            if frozen:
                with torch.no_grad():
                    bases.append(self._body(xs).float())
                    embs.append(self.head_net.embed_ffhq(xs).float())
        if cfg.batch - n_syn:
            xr, br, er = self._real_batch(cfg.batch - n_syn)
            parts.append(xr)
            bases.append(br)
            embs.append(er)
        x = torch.cat(parts)
        self.E.train(not frozen)  # a frozen body keeps its BatchNorm statistics (the cache was made in eval mode)
        if self.head is not None:
            self.head.train()
        loss = self.losses(x, ws_true, n_syn, base=torch.cat(bases) if frozen else None,
                           emb=torch.cat(embs) if frozen else None)
        self.opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        self.opt.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in loss.items()}

    def state(self):
        return dict(E=self.E.state_dict(), opt=self.opt.state_dict(), step=self.step, rng=self.rng.get_state(),
                    torch_rng=torch.get_rng_state(), encoder_config=self.enc_config,
                    id_head=self.head.state_dict() if self.head is not None else None,
                    id_head_config=self.head.config() if self.head is not None else None,
                    latent_avg=self.inv.latent_avg.cpu(),
                    config=config_snapshot(self.cfg))

    def save_checkpoint(self) -> Path:
        return write_checkpoint(self.out, self.state())

    def _resume(self):
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            if self.cfg.init_from:
                self._init_from(self.cfg.init_from)
            return
        st = torch.load(path, map_location="cpu", weights_only=True)
        self.E.load_state_dict(st["E"])
        if self.head is not None:
            if st.get("id_head") is None:
                raise ValueError(f"{path} has no identity head but the config asks for one; use a new out folder")
            self.head.load_state_dict(st["id_head"])
        self.opt.load_state_dict(st["opt"])
        self.step = st["step"]
        self.rng.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        log.info("resumed encoder from %s at step %d", path, self.step)

    def _init_from(self, path: str):
        """Fine-tune from exported encoder weights (e.g. after the generator was trained further)."""
        p = Path(path) if Path(path).is_file() else locate(path)
        state, config = load_state(p)
        state.pop("latent_avg", None)   # the frozen generator's own latent_avg is used
        head_state = pop_id_head_state(state)
        if head_state and self.head is None:
            log.warning("%s has an identity head but this config has none (id_head): training and exporting the "
                        "body alone drops it", p)
        want = self.enc_config
        have = dict(config.get("encoder", {}))
        if have and have != want:
            raise CheckpointFormatError(f"{p}: encoder config {have} does not match the training config {want}")
        self.E.load_state_dict(state)
        if head_state and self.head is not None:
            if config.get("id_head", {}).get("layers") != self.head.layers:
                raise CheckpointFormatError(f"{p}: identity head {config.get('id_head')} does not match "
                                            f"the training config {self.head.config()}")
            self.head.load_state_dict(head_state)
        log.info("initialised encoder from %s (optimiser restarts)", p)

    @torch.no_grad()
    def sample_grid(self, path):
        self.E.eval()
        if self.head is not None:
            self.head.eval()
        y = self.G.synthesis(self.inv.encode(self.fixed_real), noise_mode="const")
        save_grid(torch.cat([self.fixed_real, y.float()]).cpu(), path, nrow=8, scale=2)

    def run(self) -> dict:
        cfg = self.cfg
        t0 = t_ckpt = time.time()
        stats = {}
        logf = open(self.out / "log.jsonl", "a")
        stop = _stop_on_sigterm()
        while self.step < cfg.total_steps:
            if stop or (cfg.max_minutes is not None and time.time() - t0 > cfg.max_minutes * 60):
                break
            stats = self.train_step()
            if self.step % 25 == 0:
                rec = dict(step=self.step, **{k: round(v, 5) for k, v in stats.items()})
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info(" ".join(f"{k}={v}" for k, v in rec.items()))
            if self.step % cfg.sample_steps == 0:
                self.sample_grid(self.out / f"recon_{self.step:06d}.png")
            if time.time() - t_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                t_ckpt = time.time()
        self.save_checkpoint()
        self.sample_grid(self.out / "recon_latest.png")
        logf.close()
        return stats


def export_encoder(checkpoint: str | Path, out_path: str | Path, fp16: bool = True) -> Path:
    """Write a training checkpoint's encoder + latent_avg as our safetensors + JSON."""
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = dict(st["E"])
    state["latent_avg"] = st["latent_avg"]
    config = dict(arch="e4e", encoder=st["encoder_config"])
    if st.get("id_head") is not None:
        state.update({f"id_head.{k}": v for k, v in st["id_head"].items()})
        config["id_head"] = st["id_head_config"]
    cfg = st["config"]
    meta = dict(kind="e4e", steps=int(st["step"]), generator=cfg["generator"],
                data="LFW train people (FFHQ-aligned)" + (" + generator samples" if cfg.get("synthetic_fraction", 0.5) > 0
                                                          else ""),
                trained=cfg.get("train", "all"), init_from=cfg.get("init_from"))
    save_model(state, out_path, config, meta, fp16=fp16)
    return Path(out_path)
