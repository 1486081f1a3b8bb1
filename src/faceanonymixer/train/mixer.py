"""Trainer of the feed-forward mixer (``faceanonymixer train mixer``; the network is ``mixer.Mixer``, docs/mixer.md).

Each step draws P 'train' people x J different photos of each and K fresh random keys, and protects every
(photo, key) pair alone in one pass: N = P*J*K protected images. The losses (``train.mixer_loss``) act on the
loss recogniser's embeddings of the outputs (SFace), the attribute maps, the generator's own discriminator and
the band's distance from the mapping network. The generator, inverter, recogniser and discriminator are frozen;
only the mixer learns. The inverter's codes and the recogniser's embeddings of the training photos never change,
so they are computed once and cached in the output folder (``frozen_cache.pt``, codes in float16).

Resumable (``checkpoint.pt`` with the mixer, Adam, step and every RNG; SIGTERM writes it), logs to ``log.jsonl``,
exports our safetensors + JSON (``export``)."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..mixer import KeyCodes, Mixer, export_mixer, key_codes, random_keys
from .checkpoint import config_snapshot, write_checkpoint
from .data import load_aligned, prepare_aligned, resolve_data
from .gan import _stop_on_sigterm, resolve_device
from .mixer_loss import MixerLossConfig, mixer_losses

log = logging.getLogger(__name__)


@dataclass
class MixerTrainConfig:
    generator: str = "fam-stylegan2-64"              # registry name or weights file of the (frozen) generator
    inverter: str = "fam-e4e-64"                     # registry name or weights file of the (frozen) inverter
    id_net: str = "sface"                            # loss recogniser: the mixer's input e and the loss embeddings
    discriminator: str | None = "training/fam_stylegan2_64_resume.safetensors"  # the generator's own D (keys D.*);
                                                     # None: no adversarial term
    data: str | None = None                          # identity folders (only 'train' people are used); None = $FACEANONYMIXER_LFW/images
    cache: str = "runs/data"                         # aligned-image cache (shared with the other trainers)
    out: str = "runs/mixer"                          # checkpoints, samples, log, frozen cache
    identity_layers: list[int] | None = None         # band the mixer writes; None = the generator's (make_plan)
    key_context: str = "faceanonymixer/v1"           # keys.DEFAULT_CONTEXT (the z / rotation derivation)
    key_psi: float | None = None                     # None = the generator's key_psi (keys.key_psi)
    mixer: dict = field(default_factory=lambda: dict(hidden=512, depth=3, alpha=1.0, carry=True))  # Mixer kwargs
    people: int = 8                                  # P people per step
    photos: int = 2                                  # J photos per person (people with fewer are skipped)
    keys: int = 2                                    # K fresh random keys per step, shared by all its people
    lr: float = 1e-3                                 # Adam lr
    alpha_lr: float = 1e-2                           # Adam lr of log(alpha), the key/person balance (one scalar:
                                                     # at the net's lr it would take thousands of steps to move)
    loss: MixerLossConfig = field(default_factory=MixerLossConfig)
    total_steps: int = 1_000_000                     # stop after this many steps ...
    max_minutes: float | None = None                 # ... or this many minutes of this run
    checkpoint_minutes: float = 5.0                  # checkpoint at least this often
    sample_steps: int = 250                          # sample grid every this many steps
    log_steps: int = 10                              # log line every this many steps
    seed: int = 0
    device: str = "auto"
    threads: int | None = None                       # torch threads (1 on a shared CPU)
    max_images: int | None = None                    # cap on real images (tests)


class MixerTrainer:
    def __init__(self, cfg: MixerTrainConfig,
                 images: np.ndarray | None = None,      # uint8 [N,R,R,3] FFHQ-aligned (tests); else the LFW cache
                 persons: np.ndarray | None = None,     # [N] person names of ``images``
                 generator=None, inverter=None, id_net=None,  # frozen models (tests); else loaded by name
                 discriminator=None):                   # frozen D (tests); else cfg.discriminator
        from ..losses import SFaceEarlyFeatures
        from ..mixing import MixingConfig, make_plan
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        if generator is None:
            from ..models.loading import load_generator
            generator = load_generator(cfg.generator)
        self.G = generator.to(self.device).eval().requires_grad_(False)
        if inverter is None:
            from ..models.encoders import load_inverter
            inverter = load_inverter(cfg.inverter, self.G, device=self.device)
        self.inverter = inverter.to(self.device).eval().requires_grad_(False)
        if id_net is None:
            from ..fr import get_recogniser
            id_net = get_recogniser(cfg.id_net, device=str(self.device))
        self.id_net = id_net
        # one SFace pass gives the embedding and the attribute maps
        self.attr = SFaceEarlyFeatures(id_net) if getattr(id_net, "name", "") == "sface" else None
        if self.attr is None and cfg.loss.w_attr > 0:
            raise ValueError("loss.w_attr > 0 needs the sface recogniser (its early maps are the attribute features)")
        self.D = discriminator if discriminator is not None else self._load_discriminator()
        if self.D is not None:
            self.D = self.D.to(self.device).eval().requires_grad_(False)
        self.plan = make_plan(self.G.num_ws, MixingConfig(identity_layers=cfg.identity_layers), self.G.resolution,
                              getattr(self.G, "identity_layers", None))
        from ..keys import key_psi
        self.psi = key_psi(self.G, cfg.key_psi)
        self.M = Mixer(num_ws=self.G.num_ws, w_dim=self.G.w_dim, z_dim=self.G.z_dim,
                       band=list(self.plan.optimised_layers), emb_dim=int(id_net.dim), id_net=str(id_net.name),
                       **cfg.mixer).to(self.device)
        rest = [p for n, p in self.M.named_parameters() if n != "log_alpha"]
        self.opt = torch.optim.Adam([dict(params=rest), dict(params=[self.M.log_alpha], lr=cfg.alpha_lr)],
                                    lr=cfg.lr, betas=(0.9, 0.99))
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.real, self.people = self._load_data(images, persons)
        self._resume()
        self.cache = self._frozen_cache()
        g = torch.Generator().manual_seed(7)
        self.sample_people = torch.randperm(len(self.people), generator=g)[:8].tolist()
        self.sample_keys = random_keys(2, g)

    # -- data --------------------------------------------------------------------------------------------
    def _load_data(self, images, persons):
        if images is None:
            path = prepare_aligned(resolve_data(self.cfg.data), self.cfg.cache, self.G.resolution, "train",
                                   self.cfg.max_images)
            images, persons = load_aligned(path)
        R = self.G.resolution
        assert images.ndim == 4 and images.shape[1:] == (R, R, 3), images.shape
        assert persons is not None and len(persons) == len(images), "persons must name every image"
        by: dict[str, list[int]] = {}
        for i, p in enumerate(persons):
            by.setdefault(str(p), []).append(i)
        people = [idx for _, idx in sorted(by.items()) if len(idx) >= self.cfg.photos]
        if len(people) < max(2, self.cfg.people):
            raise ValueError(f"{len(people)} people with >= {self.cfg.photos} photos; need at least "
                             f"{max(2, self.cfg.people)}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)     # uint8 [N,3,R,R]
        log.info("mixer training data: %d photos of %d people", x.shape[0], len(people))
        return x, people

    def _to_float(self, x_u8):
        return x_u8.float().div(127.5).sub(1.0).to(self.device)

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.inverter.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        h.update(str(getattr(self.id_net, "name", "")).encode())
        h.update(self.real[:: max(1, self.real.shape[0] // 64)].numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def _frozen_cache(self) -> dict:
        """Inverter codes (float16) and recogniser embeddings of every training photo, computed once."""
        path = self.out / "frozen_cache.pt"
        fp = self._fingerprint()
        if path.is_file():
            c = torch.load(path, map_location="cpu", weights_only=True)
            if c.get("fingerprint") == fp and c["codes"].shape[0] == self.real.shape[0]:
                return c
        codes, emb = [], []
        t0 = time.time()
        for i in range(0, self.real.shape[0], 64):
            x = self._to_float(self.real[i:i + 64])
            codes.append(self.inverter.encode(x).float().half().cpu())
            emb.append(self.id_net.embed_ffhq(x).float().cpu())
        c = dict(codes=torch.cat(codes), emb=torch.cat(emb), fingerprint=fp)
        from ..fileio import atomic_write
        atomic_write(path, lambda f: torch.save(c, f))
        log.info("cached the inverter codes and embeddings of %d photos in %.0f s", self.real.shape[0],
                 time.time() - t0)
        return c

    def _load_discriminator(self):
        if not self.cfg.discriminator:
            return None
        from ..models.io import load_state
        from ..models.stylegan2 import Discriminator
        state, conf = load_state(self.cfg.discriminator)
        D = Discriminator(resolution=int(conf["resolution"]),
                          channels={int(k): int(v) for k, v in conf["d_channels"].items()})
        D.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("D.")})
        if D.resolution != self.G.resolution:
            raise ValueError(f"discriminator is for {D.resolution} px, the generator makes {self.G.resolution} px")
        return D

    # -- one step ----------------------------------------------------------------------------------------
    def _key_codes(self, keys) -> KeyCodes:
        return KeyCodes.cat([key_codes(k, self.G, self.cfg.key_context, self.psi) for k in keys]).to(self.device)

    def batch(self, people: int | None = None, photos: int | None = None):
        """(image indices [P*J], person ids [P*J]) of the step's photos, from self.rng."""
        cfg = self.cfg
        sel = torch.randperm(len(self.people), generator=self.rng)[:people or cfg.people].tolist()
        idx, pid = [], []
        for p in sel:
            imgs = self.people[p]
            pick = torch.randperm(len(imgs), generator=self.rng)[:photos or cfg.photos].tolist()
            idx += [imgs[j] for j in pick]
            pid += [p] * len(pick)
        return torch.tensor(idx), torch.tensor(pid)

    def losses(self, idx: torch.Tensor, pid: torch.Tensor, kc: KeyCodes, aux: tuple | None = None) -> dict:
        """Protect every photo ``idx`` under every key of ``kc`` ([K]) and score the result; ``aux`` = (indices,
        person ids) of the cached-embedding batch of the ``embed`` term (None: no term)."""
        K, n = len(kc), idx.shape[0]
        ws_real = self.cache["codes"][idx].float().to(self.device).repeat(K, 1, 1)
        e_r = self.cache["emb"][idx].to(self.device).repeat(K, 1)
        kidx = torch.arange(K).repeat_interleave(n)
        ws, w_pseudo = self.M(ws_real, e_r, kc.index(kidx), self.G, self.psi, return_pseudo=True)
        y = self.G.synthesis(ws, noise_mode="const").float()
        f_p = f_r = None
        if self.attr is not None:
            e_p, f_p = self.attr.embed_and_features(y)
            if self.cfg.loss.w_attr > 0:
                with torch.no_grad():
                    f_r = [f.repeat(K, 1, 1, 1) for f in self.attr.features(self._to_float(self.real[idx]))]
            else:
                f_p = None
        else:
            e_p = self.id_net.embed_ffhq(y)
        d = self.D(y) if self.D is not None and self.cfg.loss.w_adv > 0 else None
        band = ws[:, self.M.band] if self.M.carry is not None else None
        u_aux = pid_aux = None
        if aux is not None and self.cfg.loss.w_embed > 0:
            u_aux = self.M.person_dir(self.cache["emb"][aux[0]].to(self.device))
            pid_aux = aux[1].to(self.device)
        return mixer_losses(self.cfg.loss, e_p, e_r, pid.repeat(K).to(self.device), kidx.to(self.device),
                            f_p, f_r, d, band, w_pseudo if band is not None else None, u_aux, pid_aux)

    def train_step(self, fixed: tuple | None = None) -> dict:
        """One Adam step on a fresh batch and fresh keys (``fixed`` = (idx, pid, KeyCodes): that batch instead)."""
        aux = None
        if fixed is None:
            idx, pid = self.batch()
            kc = self._key_codes(random_keys(self.cfg.keys, self.rng))
            if self.cfg.loss.w_embed > 0:
                aux = self.batch(self.cfg.loss.embed_people, 2)
        else:
            idx, pid, kc = fixed
        self.M.train()
        loss = self.losses(idx, pid, kc, aux)
        self.opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        self.opt.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in loss.items()}
        out["alpha"] = float(self.M.alpha.detach())
        return out

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        return dict(M=self.M.state_dict(), opt=self.opt.state_dict(), step=self.step, rng=self.rng.get_state(),
                    torch_rng=torch.get_rng_state(), mixer_config=self.M.config(),
                    config=config_snapshot(self.cfg))

    def save_checkpoint(self) -> Path:
        return write_checkpoint(self.out, self.state())

    def _resume(self):
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            return
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st["mixer_config"] != self.M.config():
            from ..errors import CheckpointFormatError
            raise CheckpointFormatError(f"{path}: mixer config {st['mixer_config']} does not match this training "
                                        f"config's {self.M.config()}; use a new out folder")
        self.M.load_state_dict(st["M"])
        self.opt.load_state_dict(st["opt"])
        self.step = st["step"]
        self.rng.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        log.info("resumed mixer from %s at step %d", path, self.step)

    @torch.no_grad()
    def sample_grid(self, path):
        """Rows: 8 training photos; their protection under key A; under key B (columns share a key per row)."""
        from .grid import save_grid
        self.M.eval()
        idx = torch.tensor([self.people[p][0] for p in self.sample_people])
        x = self._to_float(self.real[idx])
        ws_real = self.cache["codes"][idx].float().to(self.device)
        e = self.cache["emb"][idx].to(self.device)
        rows = [x]
        for k in self.sample_keys:
            kc = self._key_codes([k]).index(torch.zeros(len(idx), dtype=torch.long))
            rows.append(self.G.synthesis(self.M(ws_real, e, kc, self.G, self.psi), noise_mode="const").float()
                        .clamp(-1, 1))
        save_grid(torch.cat(rows).cpu(), path, nrow=len(idx), scale=2)

    def run(self) -> dict:
        cfg = self.cfg
        t0 = t_ckpt = time.time()
        stats: dict = {}
        logf = open(self.out / "log.jsonl", "a")
        stop = _stop_on_sigterm()
        while self.step < cfg.total_steps:
            if stop or (cfg.max_minutes is not None and time.time() - t0 > cfg.max_minutes * 60):
                break
            ts = time.time()
            stats = self.train_step()
            if self.step % cfg.log_steps == 0:
                rec = dict(step=self.step, sec=round(time.time() - ts, 2), **{k: round(v, 5) for k, v in stats.items()})
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info(" ".join(f"{k}={v}" for k, v in rec.items()))
            if cfg.sample_steps and self.step % cfg.sample_steps == 0:
                self.sample_grid(self.out / f"sample_{self.step:06d}.png")
            if time.time() - t_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                t_ckpt = time.time()
        self.save_checkpoint()
        logf.close()
        return stats


def export_checkpoint(checkpoint: str | Path, out_path: str | Path) -> Path:
    """A training checkpoint's mixer -> our safetensors + JSON (float32), with its provenance in meta."""
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    m = Mixer(**st["mixer_config"])
    m.load_state_dict(st["M"])
    cfg = st["config"]
    meta = dict(kind="mixer", steps=int(st["step"]), generator=cfg["generator"], inverter=cfg["inverter"],
                id_net=cfg["id_net"], key_context=cfg["key_context"], key_psi=cfg["key_psi"],
                data="LFW train people (FFHQ-aligned), fresh random keys every step",
                batch=dict(people=cfg["people"], photos=cfg["photos"], keys=cfg["keys"]), loss=cfg["loss"])
    return export_mixer(m, out_path, meta)
