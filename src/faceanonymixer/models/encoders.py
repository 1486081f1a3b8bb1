"""Inverters (image -> W+) behind one entry point: ``load_inverter(name_or_path)``.

- registry name ``fam-e4e-64`` or our ``.safetensors`` (+ JSON): our embedded e4e-style encoder (with an
  identity head fed by a recogniser's embedding when its config has ``id_head``, see ``models.id_head``);
- an official ``e4e_ffhq_encode.pt`` (or registry name ``e4e-ffhq``): Encoder4Editing via ``models.e4e.load_e4e``.
Both return an ``E4EInverter``: ``encode(x[N,3,R,R] in [-1,1], FFHQ-aligned) -> ws[N,num_ws,512]``."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import registry
from ..errors import CheckpointFormatError
from ..fr import get_recogniser
from .e4e import E4EInverter, Encoder4Editing, load_e4e
from .id_head import IdentityHead
from .io import load_state


def build_encoder(config: dict) -> Encoder4Editing:
    """Encoder4Editing from the JSON config of our weights file."""
    kw = dict(config)
    for k in ("units", "channels"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return Encoder4Editing(**kw)


def pop_id_head_state(state: dict) -> dict:
    """Remove the identity head's tensors (``id_head.*``) from an encoder state dict and return them, unprefixed."""
    return {k[len("id_head."):]: state.pop(k) for k in list(state) if k.startswith("id_head.")}


def build_id_head(config: dict):
    """IdentityHead from the ``id_head`` entry of our encoder config."""
    return IdentityHead(**config)


def load_inverter(name_or_path: str | os.PathLike, generator=None, device: str | torch.device = "cpu") -> E4EInverter:
    """Load an inverter; if ``generator`` is given, its num_ws / w_dim must match (a clear error otherwise)."""
    s = str(name_or_path)
    path = registry.locate(s) if s in registry.MODELS else Path(s)
    if not path.is_file():
        path = registry.locate("fam-e4e-64", explicit=path)  # raises a MissingWeightsError naming the file
    if path.suffix == ".safetensors":
        state, cfg = load_state(path)
        if cfg.get("arch") != "e4e":
            raise CheckpointFormatError(f"{path}: not an encoder weights file (arch={cfg.get('arch')!r}); "
                                        "expected one written by `faceanonymixer train encoder`")
        enc = build_encoder(cfg["encoder"])
        latent_avg = state.pop("latent_avg")
        head_state = pop_id_head_state(state)
        head, id_net = None, None
        if cfg.get("id_head"):
            head = build_id_head(cfg["id_head"])
            id_net = get_recogniser(head.id_net, device=device)  # names the missing file if it is absent
        elif head_state:
            raise CheckpointFormatError(f"{path}: identity-head weights but no 'id_head' in the config beside them")
        try:
            enc.load_state_dict(state)
            if head is not None:
                head.load_state_dict(head_state)
        except RuntimeError as e:
            raise CheckpointFormatError(f"{path}: weights do not match the encoder config beside them: {e}") from e
        inv = E4EInverter(enc.eval(), latent_avg, id_head=head, id_net=id_net)
    else:
        inv = load_e4e(path, device="cpu").inverter()
    inv = inv.to(device).eval().requires_grad_(False)
    if generator is not None and (inv.num_ws != generator.num_ws or inv.w_dim != generator.w_dim):
        raise CheckpointFormatError(
            f"{path}: encoder gives {inv.num_ws}x{inv.w_dim} W+ codes but the generator expects "
            f"{generator.num_ws}x{generator.w_dim}; use the encoder trained for this generator")
    return inv
