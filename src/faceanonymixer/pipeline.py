"""FaceAnonyMixer end to end: align -> invert -> (optional latent refinement) -> mix -> optimise -> synthesise.

Python API (see docs/method.md)::

    from faceanonymixer import pipeline, keys, workflow
    prot = pipeline.Protector(workflow.load_config("configs/default.yaml").protect)   # loads models once
    res = prot.protect(["a1.jpg", "a2.jpg"], keys.read_key_file("alice.key"))         # one person
    batch = prot.protect_people([["a1.jpg"], ["b1.jpg", "b2.jpg"]], [key_a, key_b])   # many, batched
    pipeline.save_person(res, "out/alice", prot)                                        # PNG + sidecar JSON

Items may be image paths, RGB uint8 arrays, or already FFHQ-aligned tensors [3,R,R] in [-1,1] (which skip
detection; used for synthetic faces). Failures are collected per item (``BatchResult.failures``), never fatal
for the batch. Same input + key + config (and batch composition) -> bit-identical output on the same machine.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import config as config_mod
from . import registry
from .align import FACE_SELECT, Aligner
from .config import ConfigError
from .fileio import atomic_write
from .fr import available, get_recogniser
from .models.encoders import load_inverter
from .models.irse import resize_to
from .models.loading import load_generator
from .errors import FaceAnonyMixerError, ImageError
from .keys import DEFAULT_CONTEXT, Key, key_psi, key_wplus
from .losses import LossConfig, attribute_loss, get_attribute_encoder
from .mixing import MixingConfig, make_plan
from .optimize import Group, OptimConfig, optimise, single_image_group
from .tensors import from_uint8, to_uint8  # noqa: F401 - re-exported (pipeline.to_uint8 predates tensors.py)

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


# -- configuration -----------------------------------------------------------------------------------------
@dataclass
class ModelsConfig:
    generator: str = "fam-stylegan2-64"   # registry name or file path (models.loading.load_generator)
    inverter: str = "fam-e4e-64"          # registry name or file path (models.encoders.load_inverter)
    id_net: str = "auto"                  # loss recogniser: 'auto' = arcface-ir-se50 if present, else sface
    device: str = "cpu"
    mixer: str = "fam-mixer-64"           # engine 'mixer': registry name or file path of the mixer weights
    lpips_backbone: str = "auto"          # refine.loss 'lpips': ImageNet backbone file; 'auto' = the registry's
                                          # vgg16-imagenet / alexnet-imagenet (by refine.lpips_net)

    HASH_OMIT_DEFAULTS = ("mixer", "lpips_backbone")  # config.config_hash: added later, opt-in


@dataclass
class KeyConfig:
    context: str = DEFAULT_CONTEXT        # application context mixed into the key derivation
    psi: float | None = None              # truncation of the key's code; None = the generator weights' key_psi,
                                          # else 0.7 (paper; keys.key_psi)


REFINE_LOSSES = ("mse_features", "lpips")


@dataclass
class RefineConfig:
    """Latent-only inversion refinement after the encoder. ``loss``: 'lpips' is the paper's (150 Adam steps at
    lr 5e-4 on LPIPS-VGG + 0.1 MSE, compared at 256 px: configs/paper.yaml); 'mse_features' is MSE + w_perc *
    the attribute-feature distance (an offline perceptual term, needing no ImageNet file: the embedded models'
    default)."""
    steps: int = 0                        # 0 = encoder only
    lr: float = 0.02                      # measured: 100 steps at 0.02 beat 150 at 0.005 (docs/models.md)
    w_mse: float = 1.0                    # weight of the pixel MSE
    w_perc: float = 0.01                  # weight of the perceptual term (attribute features, or LPIPS for 'lpips')
    loss: str = "mse_features"            # 'mse_features' | 'lpips' (REFINE_LOSSES)
    lpips_net: str = "vgg"                # loss 'lpips': backbone 'vgg' (the paper) or 'alex'
    size: int = 0                         # side both images are area-resized to before the loss; 0 = generator's

    LIMITS = dict(steps=(0, 100_000), lr=(0.0, None), size=(0, 4096))  # checked by config.load
    HASH_OMIT_DEFAULTS = ("loss", "lpips_net", "size")  # config.config_hash: added later, opt-in


def refine_latents(generator, ws: torch.Tensor, x: torch.Tensor, rc: RefineConfig, attr=None,
                   noise_mode: str = "const", lpips=None) -> torch.Tensor:
    """Latent-only inversion refinement: Adam on ws[N,L,D] (generator frozen) so that G(ws) matches x[N,3,R,R].
    Loss per image: ``rc.w_mse * MSE + rc.w_perc * P`` on both images area-resized to ``rc.size`` (if set and
    smaller), P = ``lpips(y, x)`` for rc.loss 'lpips' (models.lpips.LPIPS, required then), else the
    attribute-feature distance (``attr.features``; skipped when attr is None). Returns the refined ws,
    detached. Each image's loss is summed, so images do not interact."""
    assert ws.dim() == 3 and x.dim() == 4 and ws.shape[0] == x.shape[0], (tuple(ws.shape), tuple(x.shape))
    if rc.loss not in REFINE_LOSSES:
        raise ConfigError(f"protect.refine.loss must be one of {REFINE_LOSSES}, got {rc.loss!r}")
    if rc.loss == "lpips" and lpips is None:
        raise ConfigError("protect.refine.loss is 'lpips' but no LPIPS network was given")
    size = rc.size if 0 < rc.size < x.shape[-1] else 0
    x = resize_to(x, size) if size else x
    ws = ws.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=rc.lr)
    f_ref = None
    if rc.loss == "mse_features" and rc.w_perc > 0 and attr is not None:
        with torch.no_grad():
            f_ref = attr.features(x)
    for _ in range(rc.steps):
        opt.zero_grad(set_to_none=True)
        y = generator.synthesis(ws, noise_mode=noise_mode)
        if size:
            y = resize_to(y, size)
        loss = rc.w_mse * F.mse_loss(y, x, reduction="none").mean((1, 2, 3)).sum()
        if rc.loss == "lpips" and rc.w_perc > 0:
            loss = loss + rc.w_perc * lpips(y, x).sum()
        elif f_ref is not None:
            loss = loss + rc.w_perc * attribute_loss(attr.features(y), f_ref).sum()
        loss.backward()
        opt.step()
    return ws.detach()


@dataclass
class ProtectConfig:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    key: KeyConfig = field(default_factory=KeyConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    batch_people: int = 16                # people optimised together in one batched pass
    face: str = "single"                  # several faces in a photo: 'single' (error unless one dominates),
                                          # 'largest' or 'center' (align.select_face)
    engine: str = "optimise"              # 'optimise': the paper's per-person optimisation (optim.*, loss.*);
                                          # 'mixer': one feed-forward pass per image (models.mixer, mixer.py)
    mixer_refine_steps: int = 0           # engine 'mixer': then this many steps of the paper's optimisation
                                          # (loss.*, optim.* but steps) from the mixer's codes, each image alone

    LIMITS = dict(batch_people=(1, 1024), mixer_refine_steps=(0, 10_000))   # checked by config.load
    HASH_OMIT_DEFAULTS = ("engine", "mixer_refine_steps")  # config.config_hash: added later, opt-in


# -- results ----------------------------------------------------------------------------------------------
@dataclass
class PersonResult:
    name: str
    key_fingerprint: str
    images: torch.Tensor                  # [n,3,R,R] protected, in [-1,1] (CPU)
    ws: torch.Tensor                      # [n,L,D] protected codes (in memory only; never written)
    sources: list[str]                    # one per image
    timings: dict


@dataclass
class BatchResult:
    results: list[PersonResult]
    failures: list[tuple[str, str]]       # (item, message)


def module_digest(m: torch.nn.Module) -> str:
    """sha256 (16 hex) of a module's state dict, for modules given in memory."""
    h = hashlib.sha256()
    for k, v in sorted(m.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- the protector ----------------------------------------------------------------------------------------
class Protector:
    """Loads the generator, inverter and networks once; protects people in batches.

    Attributes for evaluation code: ``generator``, ``inverter``, ``id_net``, ``attr``, ``plan``, ``resolution``,
    ``config``; ``key_code(key)`` is the key's W+ code; ``invert(x)``; ``synthesise(ws)``."""

    def __init__(self, config: ProtectConfig | None = None, *,
                 generator=None,                 # a Generator instance (else loaded from config.models.generator)
                 inverter=None,                  # an Inverter with encode(x)->ws (else loaded from config)
                 id_net=None,                    # a differentiable Recogniser (else from config.models.id_net)
                 attr_net=None,                  # attribute encoder; default from config.loss.attr_net
                 lpips=None,                     # models.lpips.LPIPS for refine.loss 'lpips' (else loaded)
                 device: str | None = None):
        self.config = config or ProtectConfig()
        if self.config.face not in FACE_SELECT:
            raise ConfigError(f"protect.face must be one of {FACE_SELECT}, got {self.config.face!r}")
        self.device = _device(device or self.config.models.device)
        self.model_info: dict[str, dict] = {}
        if generator is None:
            generator = load_generator(self.config.models.generator)
            self.model_info["generator"] = _file_info(self.config.models.generator)
        else:
            self.model_info["generator"] = dict(name=type(generator).__name__, sha256=module_digest(generator))
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        if inverter is None:
            inverter = load_inverter(self.config.models.inverter, self.generator, device=self.device)
            self.model_info["inverter"] = _file_info(self.config.models.inverter)
        else:
            self.model_info["inverter"] = dict(name=type(inverter).__name__, sha256=module_digest(inverter))
        self.inverter = inverter.to(self.device).eval().requires_grad_(False) \
            if isinstance(inverter, torch.nn.Module) else inverter
        if id_net is None:
            name = self.config.models.id_net
            if name == "auto":
                name = "arcface-ir-se50" if "arcface-ir-se50" in available() else "sface"
            id_net = get_recogniser(name, device=self.device)
            self.model_info["id_net"] = _file_info(name)
        else:
            self.model_info["id_net"] = dict(name=getattr(id_net, "name", type(id_net).__name__))
        if not getattr(id_net, "differentiable", False):
            raise FaceAnonyMixerError(f"id_net '{getattr(id_net, 'name', id_net)}' is not differentiable; use sface "
                                      "or arcface-ir-se50")
        self.id_net = id_net
        if attr_net is None:
            attr_net = get_attribute_encoder(self.config.loss.attr_net,
                                             id_net if getattr(id_net, "name", "") == "sface" else None)
        self.attr = attr_net
        self.model_info["attr_net"] = dict(name=getattr(attr_net, "name", "none"))
        self.lpips = self._load_lpips(lpips)
        self.resolution = int(self.generator.resolution)
        self.plan = make_plan(self.generator.num_ws, self.config.mixing, self.resolution,
                              getattr(self.generator, "identity_layers", None))
        self.mixer = None
        if self.config.engine not in ENGINES:
            raise ConfigError(f"protect.engine must be one of {ENGINES}, got {self.config.engine!r}")
        if self.config.engine == "mixer":
            self.mixer = load_engine_mixer(self.config.models.mixer, self, self.device)
            self.model_info["mixer"] = _file_info(self.config.models.mixer)
        self._aligner = None
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def _load_lpips(self, lpips):
        """The LPIPS network of refine.loss 'lpips' (None when the refinement does not use it)."""
        rc = self.config.refine
        if rc.loss not in REFINE_LOSSES:
            raise ConfigError(f"protect.refine.loss must be one of {REFINE_LOSSES}, got {rc.loss!r}")
        if rc.loss != "lpips" or rc.steps <= 0:
            return None
        if lpips is None:
            from .models.lpips import NETS, load_lpips
            if rc.lpips_net not in NETS:
                raise ConfigError(f"protect.refine.lpips_net must be one of {tuple(NETS)}, got {rc.lpips_net!r}")
            bb = self.config.models.lpips_backbone
            lpips = load_lpips(rc.lpips_net, backbone=None if bb == "auto" else bb, device=self.device)
            self.model_info["lpips"] = _file_info(NETS[rc.lpips_net]["backbone"] if bb == "auto" else bb)
        else:
            self.model_info["lpips"] = dict(name=f"lpips-{getattr(lpips, 'net', '?')}", sha256=module_digest(lpips))
        return lpips.to(self.device).eval().requires_grad_(False)

    # -- building blocks -----------------------------------------------------------------------------------
    def key_code(self, key: Key) -> torch.Tensor:
        """The key's W+ code [1,L,D] (config.key.context / psi, see keys.key_psi)."""
        return key_wplus(key, self.generator, self.config.key.context, self.config.key.psi)

    def load_face(self, item, source: str | None = None) -> tuple[torch.Tensor, str]:
        """One item -> (aligned x[1,3,R,R] in [-1,1], source name). Raises ImageError / NoFaceError."""
        R = self.resolution
        if isinstance(item, torch.Tensor):
            if item.dim() != 3 or tuple(item.shape) != (3, R, R):
                raise ImageError(f"{source or 'tensor'}: an aligned tensor must be [3,{R},{R}], got {tuple(item.shape)}")
            x = item.detach().float().clamp(-1, 1)
            return from_uint8(to_uint8(x))[None].to(self.device), source or "tensor"
        if self._aligner is None:
            self._aligner = Aligner("ffhq", size=R, select=self.config.face)
        src = source or (str(item) if isinstance(item, (str, os.PathLike)) else "array")
        crop, _ = self._aligner.align_one(item, src)
        return from_uint8(crop)[None].to(self.device), src

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder only: x[N,3,R,R] -> ws[N,L,D]."""
        ws = self.inverter.encode(x.to(self.device))
        assert ws.shape[1:] == (self.generator.num_ws, self.generator.w_dim), tuple(ws.shape)
        return ws.float()

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder then (config.refine.steps) latent-only refinement: x[N,3,R,R] -> ws[N,L,D] (detached)."""
        ws = self.encode(x)
        if self.config.refine.steps <= 0:
            return ws
        return refine_latents(self.generator, ws, x.to(self.device), self.config.refine, self.attr,
                              self.config.optim.noise_mode, self.lpips)

    @torch.no_grad()
    def synthesise(self, ws: torch.Tensor) -> torch.Tensor:
        """ws[N,L,D] -> images [N,3,R,R] in [-1,1]."""
        return self.generator.synthesis(ws.to(self.device), noise_mode=self.config.optim.noise_mode).clamp(-1, 1)

    def _augment_seed(self, key: Key, x: torch.Tensor) -> int:
        digest = hashlib.sha256(to_uint8(x[0]).tobytes()).hexdigest()
        return key.seed(self.config.key.context, f"augment|{digest}")

    def _decoys(self, key: Key) -> torch.Tensor | None:
        lc = self.config.loss
        if lc.w_sep <= 0 or lc.sep_decoys <= 0:
            return None
        ks = [Key(key.derive(f"faceanonymixer/decoy/v1|{j}")) for j in range(lc.sep_decoys)]
        return torch.cat([self.key_code(k) for k in ks])

    # -- the API ------------------------------------------------------------------------------------------
    def protect_people(self, people: Sequence[Sequence], keys: Key | Sequence[Key],
                       names: Sequence[str] | None = None, steps: int | None = None) -> BatchResult:
        """Protect several people (each a list of items) with one key each (or one key for all).
        ``steps`` overrides config.optim.steps (0 = naive mix, the no-refinement ablation)."""
        if isinstance(keys, Key):
            keys = [keys] * len(people)
        assert len(keys) == len(people), (len(keys), len(people))
        names = list(names) if names is not None else [f"person{i}" for i in range(len(people))]
        cfg = self.config.optim
        if steps is not None:
            cfg = replace(cfg, steps=int(steps))
        results: list[PersonResult] = []
        failures: list[tuple[str, str]] = []
        prepared = []
        for name, items, key in zip(names, people, keys):
            t0 = time.perf_counter()
            xs, srcs = [], []
            for j, item in enumerate(items):
                src = str(item) if isinstance(item, (str, os.PathLike)) else f"{name}[{j}]"
                try:
                    x, src = self.load_face(item, src)
                except ImageError as e:
                    failures.append((src, str(e)))
                    log.warning("skipped %s", e)
                    continue
                xs.append(x)
                srcs.append(src)
            if not xs:
                failures.append((name, f"{name}: no usable image"))
                continue
            prepared.append((name, key, torch.cat(xs), srcs, time.perf_counter() - t0))
        B = max(1, int(self.config.batch_people))
        if self.mixer is not None:
            return BatchResult(self._mix_people(prepared, B), failures)
        for c in range(0, len(prepared), B):
            chunk = prepared[c:c + B]
            t1 = time.perf_counter()
            groups = []
            for name, key, x, srcs, _ in chunk:
                w_real = self.invert(x)
                w_key = self.key_code(key)
                if x.shape[0] == 1:
                    g = single_image_group(x, w_real, w_key, cfg.augment_copies, self._augment_seed(key, x))
                else:
                    g = Group(x, w_real, w_key)
                g.w_decoys = self._decoys(key)
                groups.append(g)
                del w_real                        # the real codes are not kept beyond this call
            t_inv = time.perf_counter() - t1
            res = optimise(self.generator, self.id_net, self.attr, groups, self.plan, self.config.loss, cfg)
            n_faces = sum(g.n_out for g in groups)
            for (name, key, x, srcs, t_align), ws, img in zip(chunk, res.ws, res.images):
                results.append(PersonResult(
                    name=name, key_fingerprint=key.fingerprint, images=img.cpu(), ws=ws.cpu(), sources=srcs,
                    timings=dict(align_s=round(t_align, 4), invert_s_batch=round(t_inv, 4),
                                 optimise_s_batch=round(res.seconds, 4), people_in_batch=len(chunk),
                                 faces_in_batch=n_faces, steps=cfg.steps)))
        return BatchResult(results, failures)

    def _mix_people(self, prepared, B: int) -> list[PersonResult]:
        """Engine 'mixer': every image protected alone in one feed-forward pass (no image influences another, so
        the batching below changes only the speed). ``prepared``: (name, key, x, sources, align seconds)."""
        from .mixer import protect_batch
        results = []
        for c in range(0, len(prepared), B):
            chunk = prepared[c:c + B]
            t1 = time.perf_counter()
            x = torch.cat([p[2] for p in chunk])
            keys = [p[1] for p in chunk for _ in range(p[2].shape[0])]
            images, ws = protect_batch(self.mixer, self, x, keys)
            if self.config.mixer_refine_steps > 0:
                images, ws = self._refine_mixed(x, ws, keys)
            dt = time.perf_counter() - t1
            i = 0
            for name, key, xp, srcs, t_align in chunk:
                n = xp.shape[0]
                results.append(PersonResult(
                    name=name, key_fingerprint=key.fingerprint, images=images[i:i + n].cpu(), ws=ws[i:i + n].cpu(),
                    sources=srcs, timings=dict(align_s=round(t_align, 4), mixer_s_batch=round(dt, 4),
                                               people_in_batch=len(chunk), faces_in_batch=x.shape[0], steps=0)))
                i += n
        return results

    def _refine_mixed(self, x: torch.Tensor, ws: torch.Tensor, keys: Sequence[Key]):
        """``mixer_refine_steps`` of the paper's optimisation from the mixer's codes ws[N,L,D], every image alone
        (its own group with the augmented copies a lone probe gets), so the engine's outputs stay independent of
        the batch's composition. -> (images, ws) of the N images."""
        cfg = replace(self.config.optim, steps=int(self.config.mixer_refine_steps))
        groups = []
        for i, key in enumerate(keys):
            xi = x[i:i + 1]
            w_real = self.invert(xi)
            g = single_image_group(xi, w_real, self.key_code(key), cfg.augment_copies, self._augment_seed(key, xi))
            g.w_start = ws[i:i + 1].expand(g.x_ref.shape[0], -1, -1).to(w_real.dtype).clone()
            g.w_decoys = self._decoys(key)
            groups.append(g)
        res = optimise(self.generator, self.id_net, self.attr, groups, self.plan, self.config.loss, cfg)
        return torch.cat(res.images), torch.cat(res.ws)

    def protect(self, images: Sequence, key: Key, name: str = "person") -> PersonResult:
        """All ``images`` of ONE person under ``key``. Raises ImageError if none is usable."""
        br = self.protect_people([list(images)], [key], [name])
        if not br.results:
            raise ImageError("; ".join(m for _, m in br.failures))
        return br.results[0]

    def sidecar(self, result: PersonResult, index: int, png: bytes | None = None) -> dict:
        """Metadata for one protected image: never the key, never a latent, and nothing that names the person or
        the source photo (whoever receives the protected image must not learn whose it is: output file and
        folder names are the user's choice, a private manifest is opt-in, see batch.py). ``png``: the image's
        encoded bytes; their sha256 binds the sidecar to its image (an image+sidecar pair is checkable)."""
        side = dict(format="faceanonymixer-protected", version=FORMAT_VERSION,
                    key_fingerprint=result.key_fingerprint, config_hash=config_mod.config_hash(self.config),
                    resolution=self.resolution, mixing=self.plan.describe(),
                    key_psi=key_psi(self.generator, self.config.key.psi), models=self.model_info)
        if self.mixer is not None:
            side["engine"] = "mixer"
        if png is not None:
            side["image_sha256"] = hashlib.sha256(png).hexdigest()
        return side


def png_bytes(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 -> PNG bytes (deterministic for the same array)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def output_stems(sources: Sequence[str]) -> list[str]:
    """One output file stem per source: the source's stem, made unique within the person by appending '_'."""
    out, used = [], set()
    for i, src in enumerate(sources):
        stem = Path(src).stem or f"img{i}"
        while stem in used:
            stem += "_"
        used.add(stem)
        out.append(stem)
    return out


def person_files(result: PersonResult, protector: Protector) -> dict[str, bytes]:
    """{file name: bytes} of one protected person: ``<stem>.png`` and its sidecar ``<stem>.json``."""
    files = {}
    for i, stem in enumerate(output_stems(result.sources)):
        png = png_bytes(to_uint8(result.images[i]))
        files[f"{stem}.png"] = png
        files[f"{stem}.json"] = (json.dumps(protector.sidecar(result, i, png), indent=1, sort_keys=True)
                                 + "\n").encode()
    return files


def save_person(result: PersonResult, out_dir, protector: Protector) -> list[Path]:
    """Write each protected image as ``<out_dir>/<stem>.png`` plus ``<stem>.json`` (each file atomic; for a
    whole batch with resume and an atomic commit per person use ``batch.protect_dataset``). Returns PNG paths."""
    out_dir = Path(out_dir)
    paths = []
    for name, data in person_files(result, protector).items():
        p = atomic_write(out_dir / name, lambda f, d=data: f.write(d))
        if name.endswith(".png"):
            paths.append(p)
    return paths


def _write_json_atomic(path: Path, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), binary=False)


def _device(spec: str) -> torch.device:
    """torch.device from the config, with a clear error for a device this machine does not have."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"protect.models.device: '{spec}' is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"protect.models.device is '{spec}' but this torch sees no CUDA GPU; use "
                          "--set protect.models.device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"protect.models.device: '{spec}' is not supported; use cpu or cuda")
    return dev


ENGINES = ("optimise", "mixer")


def load_engine_mixer(name_or_path: str, protector: "Protector", device):
    """The mixer weights of engine 'mixer' (registry name or file), checked against the protector's generator
    and identity band; a clear message when the file is missing or was trained for other models."""
    from .mixer import check_fits, load_mixer
    path = registry.locate(name_or_path) if name_or_path in registry.MODELS else Path(name_or_path)
    if not path.is_file():
        raise FaceAnonyMixerError(f"{path}: mixer weights not found (protect.engine: mixer, models.mixer). Train "
                                  "them with `faceanonymixer train mixer --export FILE` and set models.mixer=FILE, "
                                  "or use protect.engine=optimise")
    m = load_mixer(path, device)
    check_fits(m, protector)
    return m


def _file_info(name_or_path: str) -> dict:
    try:
        if name_or_path in registry.MODELS:
            p = registry.locate(name_or_path, verify=False)
        else:
            p = Path(name_or_path)
        return dict(name=name_or_path, file=p.name, sha256=registry.sha256_file(p))
    except (FaceAnonyMixerError, OSError):
        return dict(name=name_or_path)


def protect(images: Sequence, key: Key, config: ProtectConfig | None = None) -> list[np.ndarray]:
    """One-call API: protect all ``images`` of one person with ``key``; returns HxWx3 uint8 arrays at the
    generator's resolution. Loads the models on each call: use ``Protector`` for more than one person."""
    res = Protector(config).protect(images, key)
    return [to_uint8(res.images[i]) for i in range(res.images.shape[0])]
