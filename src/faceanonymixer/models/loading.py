"""``load_generator(path_or_name)``: one entry point for every StyleGAN2 generator format we accept.

Formats, detected from the file content (not trusted from the extension):

* rosinality ``.pt``: ``{'g_ema': state_dict, 'latent_avg': (w_dim,), ...}`` (convert_weight.py / training ckpt);
* e4e ``.pt``: ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': (num_ws, w_dim), 'opts'}``;
* NVlabs network pickle ``.pkl`` (read by ``safe_pickle``, nothing executed; ``G_ema`` and its init_kwargs);
* NVlabs-named state dict ``.pt`` (``mapping.*``/``synthesis.*`` keys, optionally ``{'state_dict', 'init_kwargs'}``);
* a bare rosinality state dict (``style.*``, ``input.input``, ...);
* our own ``.safetensors`` + JSON config (``models.io``).

Every ``.pt`` is read with ``torch.load(weights_only=True)``; checkpoints never run code.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import struct
from pathlib import Path

import torch

from .. import registry
from ..errors import CheckpointFormatError, MissingWeightsError
from . import stylegan2_convert as conv
from .io import load_meta, load_state
from .safe_pickle import extract_network
from .stylegan2 import Generator

log = logging.getLogger(__name__)

_GEN_KWARGS = {"resolution", "z_dim", "w_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max",
               "channels", "lr_mlp", "blur_kernel", "conv_clamp", "fused_modconv"}
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
EXPECTED = ("a StyleGAN2 generator checkpoint: rosinality .pt {'g_ema','latent_avg'}, an e4e .pt "
            "(decoder.* keys), an NVlabs network .pkl, an NVlabs-named state dict, or a faceanonymixer "
            ".safetensors with its .json")


def resolve_path(path_or_name: str | os.PathLike) -> Path:
    """An existing file, else a registry name (``faceanonymixer.registry.locate``)."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    name = str(path_or_name)
    if name in registry.MODELS:
        return registry.locate(name)
    raise MissingWeightsError(f"{p} does not exist and '{name}' is not a registered model name "
                              f"(known: {', '.join(registry.MODELS)}; see `faceanonymixer weights`)")


def sniff(path: Path) -> str:
    """'safetensors' | 'torch' | 'pickle' | 'unknown' from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:14] == _TORCH_LEGACY_MAGIC:
        return "torch"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < n < 100_000_000:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _build(path: Path, kwargs: dict, state: dict, latent_avg: torch.Tensor | None, device, what: str) -> Generator:
    kwargs = {k: v for k, v in kwargs.items() if k in _GEN_KWARGS}
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: cannot build a Generator from its config {kwargs}: {e}") from e
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).replace("\n\t", "; ")
        if len(msg) > 1200:
            msg = msg[:1200] + " ..."
        raise CheckpointFormatError(f"{path}: the {what} weights do not fit the StyleGAN2 Generator {kwargs} "
                                    f"(wrong architecture or corrupt file): {msg}") from None
    if latent_avg is not None:
        la = latent_avg.detach().float()
        if la.ndim == 2:  # e4e stores W+ average (num_ws, w_dim); the rows are the W average repeated
            la = la.mean(0)
        if la.shape != G.latent_avg.shape:
            raise CheckpointFormatError(f"{path}: latent_avg has shape {tuple(latent_avg.shape)}, expected "
                                        f"({G.w_dim},) or (num_ws, {G.w_dim})")
        with torch.no_grad():
            G.latent_avg.copy_(la)
    elif "latent_avg" not in state:
        log.warning("%s: no latent_avg/w_avg stored; computing it from 10000 z (truncation centre)", path)
        G.compute_latent_avg()
    return G.eval().requires_grad_(False).to(device)


def weights_only_error(path, e: BaseException) -> str:
    """Our own complete message for a failed ``torch.load(weights_only=True)``: torch's is several paragraphs
    of advice (some of it - "set weights_only=False" - wrong for a file one does not trust); cut, it ends
    mid-sentence. We keep the one fact that matters: the refused global, if any."""
    msg = str(e)
    g = re.search(r"(?:Unsupported global|GLOBAL)\W+(?:GLOBAL\s+)?([\w.]+)", msg)
    if g:
        return (f"{path}: refused to load: it references the Python global '{g.group(1)}', which "
                "torch.load(weights_only=True) does not allow (a checkpoint of plain tensors never needs it; it may be malicious). Nothing from it "
                "was executed. Re-save only the tensors (state_dict) from a trusted copy, or use the official file.")
    if "zip" in msg.lower() or "EOF" in msg or "central directory" in msg:
        return f"{path}: the file is truncated or corrupt ({type(e).__name__}); re-download it."
    return (f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}); it holds objects a "
            "weights-only load refuses. Re-save only the tensors (state_dict).")


def _is_nvlabs(sd: dict) -> bool:
    return any(k.startswith("synthesis.b") for k in sd) and any(k.startswith("mapping.") for k in sd)


def _is_rosinality(sd: dict) -> bool:
    return "input.input" in sd and "style.1.weight" in sd


def _tensors_only(path: Path, d: dict, what: str) -> dict:
    bad = [k for k, v in d.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFormatError(f"{path}: {what} has non-tensor entries {bad[:5]}; expected {EXPECTED}")
    return d


def _from_rosinality(path, sd, latent_avg, device, what):
    sd = _tensors_only(path, dict(sd), what)
    try:
        kwargs = conv.generator_kwargs_from_rosinality(sd)
    except (KeyError, IndexError) as e:
        raise CheckpointFormatError(f"{path}: incomplete {what} state dict ({e}); expected {EXPECTED}") from None
    return _build(path, kwargs, sd, latent_avg, device, what)


def _from_nvlabs(path, sd, init_kwargs, device, what):
    sd = _tensors_only(path, dict(sd), what)
    try:
        ros, w_avg = conv.nvlabs_to_rosinality(sd)
    except KeyError as e:
        raise CheckpointFormatError(f"{path}: {what}: {e.args[0] if e.args else e}; expected {EXPECTED}") from None
    if init_kwargs:
        try:
            kwargs = conv.generator_kwargs_from_nvlabs(init_kwargs)
        except (ValueError, KeyError) as e:
            raise CheckpointFormatError(f"{path}: unsupported NVlabs generator: {e}") from None
    else:
        try:
            kwargs = conv.generator_kwargs_from_rosinality(ros)
        except (KeyError, IndexError) as e:
            raise CheckpointFormatError(f"{path}: incomplete {what} state dict ({e})") from None
    return _build(path, kwargs, ros, w_avg, device, what)


def load_generator(path_or_name: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Load any supported StyleGAN2 generator checkpoint -> Generator (eval mode, no grads, on ``device``)."""
    path = resolve_path(path_or_name)
    kind = sniff(path)
    if kind == "safetensors":
        state, config = load_state(path)
        config = config.get("generator", config) if isinstance(config, dict) else config
        if not isinstance(config, dict) or "resolution" not in config:
            raise CheckpointFormatError(f"{path}: its config has no generator 'resolution'; expected the "
                                        f"Generator.config dict saved by models.io.save_model")
        G = _build(path, config, state, None, device, "faceanonymixer")
        meta = load_meta(path)
        band = meta.get("identity_layers")
        if band is not None:  # the mixing band measured for this model (mixing.make_plan)
            if not (isinstance(band, list) and band and all(isinstance(i, int) and 1 <= i <= G.num_ws - 2
                                                             for i in band)):
                raise CheckpointFormatError(f"{path}: meta.identity_layers must be a list of W+ indices within "
                                            f"1..{G.num_ws - 2}, got {band!r}")
            G.identity_layers = sorted(band)
        psi = meta.get("key_psi")
        if psi is not None:  # the key truncation measured for this model (keys.key_psi)
            if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not 0 < psi <= 1.5:
                raise CheckpointFormatError(f"{path}: meta.key_psi must be a number in (0, 1.5], got {psi!r}")
            G.key_psi = float(psi)
        thr = meta.get("verify_thresholds")
        if thr is not None:  # verification thresholds calibrated on this model's protected faces (workflow)
            if not (isinstance(thr, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and -1 <= v <= 1
                                                  for k, v in thr.items())):
                raise CheckpointFormatError(f"{path}: meta.verify_thresholds must map matcher names to cosines "
                                            f"in [-1, 1], got {thr!r}")
            G.verify_thresholds = {k: float(v) for k, v in thr.items()}
        return G
    if kind == "pickle":
        sd, init_kwargs = extract_network(path, "G_ema")
        return _from_nvlabs(path, sd, init_kwargs, device, "NVlabs pickle G_ema")
    if kind != "torch":
        raise CheckpointFormatError(f"{path}: not a checkpoint (unrecognised file header); expected {EXPECTED}")

    try:
        # rosinality training checkpoints carry an argparse.Namespace ('args'): inert, so allow just that class
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign classes (argparse.Namespace) ...
        raise CheckpointFormatError(weights_only_error(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}; expected {EXPECTED}")
    if isinstance(obj.get("g_ema"), dict):
        return _from_rosinality(path, obj["g_ema"], obj.get("latent_avg"), device, "rosinality g_ema")
    sd = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
    if any(k.startswith("decoder.") for k in sd):
        dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
        return _from_rosinality(path, dec, obj.get("latent_avg"), device, "e4e decoder")
    if _is_nvlabs(sd):
        return _from_nvlabs(path, sd, obj.get("init_kwargs"), device, "NVlabs-named")
    if _is_rosinality(sd):
        return _from_rosinality(path, sd, obj.get("latent_avg"), device, "rosinality")
    keys = list(sd)[:5]
    raise CheckpointFormatError(f"{path}: no generator weights found (first keys {keys}); expected {EXPECTED}")
