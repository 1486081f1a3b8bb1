"""Encoder4Editing (e4e): IR-SE body + FPN + GradualStyleBlock heads -> W+ offsets, and its checkpoint loader.

Clean-room implementation from the golden spec (``shared/fixtures/README.md`` section 8). State-dict keys match
``e4e_ffhq_encode.pt['state_dict']`` once the ``encoder.`` prefix is stripped: ``input_layer.*``, ``body.*``
(see :mod:`.irse`), ``styles.{i}.convs.{0,2,..}``, ``styles.{i}.linear``, ``latlayer1``, ``latlayer2``.

Forward (progressive stage ``s``, default Inference = all deltas):
``w0 = styles[0](c3)``; ``w[:, i] = w0 + styles[i](f_i)`` for ``1 <= i <= min(s, n_styles - 1)``, else ``w0``;
``f_i`` = c3 for i < coarse_ind, p2 = up(c3) + latlayer1(c2) for i < middle_ind, p1 = up(p2) + latlayer2(c1)
otherwise (bilinear, align_corners=True). The output is an *offset*: add ``latent_avg`` for W+ codes
(:class:`E4EInverter` does).
"""
from __future__ import annotations

import math
import os
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointFormatError
from .irse import IRSE50_CHANNELS, IRSE50_UNITS, build_loaded, make_body, make_input_layer, resize_to, \
    safe_torch_load, stage_ends

__all__ = ["PROGRESSIVE_INFERENCE", "progressive_stage_value", "n_styles_for", "EqualLinear", "GradualStyleBlock",
           "Encoder4Editing", "E4EInverter", "E4ELoaded", "load_e4e"]

PROGRESSIVE_INFERENCE = 18  # e4e ProgressiveStage.Inference: every delta applied


def progressive_stage_value(stage: int | str) -> int:
    """e4e ProgressiveStage name or value -> int: 'WTraining' 0, 'Delta{k}Training' k, 'Inference' 18."""
    if isinstance(stage, bool):
        raise ValueError(f"invalid progressive stage {stage!r}")
    if isinstance(stage, int):
        if stage < 0:
            raise ValueError(f"progressive stage must be >= 0, got {stage}")
        return stage
    s = str(stage).split(".")[-1]
    if s == "Inference":
        return PROGRESSIVE_INFERENCE
    if s == "WTraining":
        return 0
    if s.startswith("Delta") and s.endswith("Training") and s[5:-8].isdigit():
        return int(s[5:-8])
    raise ValueError(f"unknown progressive stage {stage!r} (expected an int, 'WTraining', 'Delta<k>Training' "
                     "or 'Inference')")


def n_styles_for(resolution: int) -> int:
    """Number of W+ layers of a StyleGAN2 generator at ``resolution``: 2*log2(R) - 2 (14 @256, 18 @1024)."""
    log = int(round(math.log2(resolution)))
    if 2 ** log != resolution:
        raise ValueError(f"resolution must be a power of two, got {resolution}")
    return 2 * log - 2


class EqualLinear(nn.Module):
    """Equalised-lr linear without activation (rosinality ``EqualLinear``): y = x @ (W * lr_mul/sqrt(in))^T + b*lr_mul."""

    def __init__(self, in_dim: int, out_dim: int,  # feature sizes
                 lr_mul: float = 1.0,              # learning-rate multiplier (1 for e4e)
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,in] -> [N,out]
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs, each followed by LeakyReLU(0.01), down to 1x1, then EqualLinear."""

    def __init__(self, in_channels: int,   # feature-map channels
                 hidden: int,              # conv width (512 in e4e)
                 out_dim: int,             # style size (512)
                 spatial: int):            # input side; power of two
        super().__init__()
        n = int(round(math.log2(spatial)))
        if spatial < 2 or 2 ** n != spatial:
            raise ValueError(f"GradualStyleBlock needs a power-of-two spatial size >= 2, got {spatial}")
        layers: list[nn.Module] = []
        for j in range(n):
            layers += [nn.Conv2d(in_channels if j == 0 else hidden, hidden, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(hidden, out_dim, lr_mul=1.0)
        self.hidden = hidden
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,C,spatial,spatial] -> [N,out_dim]
        assert x.shape[-2:] == (self.spatial, self.spatial), \
            f"style block built for {self.spatial}x{self.spatial}, got {tuple(x.shape)}"
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], self.hidden))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # FPN merge: up(x) to y's size, plus y
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """e4e encoder. Input [N,3,S,S] in [-1, 1] with S = ``input_size``; output W+ offsets [N,n_styles,style_dim].

    Defaults reproduce ``Encoder4Editing(50, 'ir_se', opts)`` of a 1024 generator (18 styles, 256 input).
    """

    def __init__(self, n_styles: int = 18,                         # W+ layers (14 @256, 18 @1024, 10 @64)
                 input_size: int = 256,                            # encoder input side (power of two, >= 32)
                 units: Sequence[int] = IRSE50_UNITS,              # body units per stage (exactly 4 stages)
                 channels: Sequence[int] = IRSE50_CHANNELS,        # body channels per stage
                 mode: str = "ir_se",                              # 'ir_se' or 'ir'
                 style_dim: int = 512,                             # w size
                 style_hidden: int | None = None,                  # style-block conv width (default style_dim)
                 stem_channels: int | None = None,                 # input_layer width (default channels[0])
                 se_reduction: int = 16,
                 coarse_ind: int = 3,                              # first style that reads p2
                 middle_ind: int = 7,                              # first style that reads p1
                 progressive_stage: int | str = PROGRESSIVE_INFERENCE):
        super().__init__()
        if len(units) != 4 or len(channels) != 4:
            raise ValueError("Encoder4Editing needs a 4-stage body (taps after stages 2, 3 and 4)")
        log = int(round(math.log2(input_size)))
        if input_size < 32 or 2 ** log != input_size:
            raise ValueError(f"input_size must be a power of two >= 32, got {input_size}")
        if n_styles < 1:
            raise ValueError(f"n_styles must be >= 1, got {n_styles}")
        if not 0 < coarse_ind < middle_ind:
            raise ValueError(f"need 0 < coarse_ind < middle_ind, got {coarse_ind}, {middle_ind}")
        hidden = style_dim if style_hidden is None else style_hidden
        stem = channels[0] if stem_channels is None else stem_channels
        self.n_styles = n_styles
        self.style_count = n_styles  # reference attribute name
        self.input_size = input_size
        self.style_dim = style_dim
        self.coarse_ind = coarse_ind
        self.middle_ind = middle_ind
        self.config = dict(n_styles=n_styles, input_size=input_size, units=tuple(units), channels=tuple(channels),
                           mode=mode, style_dim=style_dim, style_hidden=hidden, stem_channels=stem,
                           se_reduction=se_reduction, coarse_ind=coarse_ind, middle_ind=middle_ind)
        self.input_layer = make_input_layer(stem)
        self.body = make_body(units, channels, stem, mode, se_reduction)
        self._taps = stage_ends(units)[1:]  # c1, c2, c3
        fpn = channels[3]
        # c3 is input/16, p2 input/8, p1 input/4 (16, 32, 64 for a 256 input).
        styles = []
        for i in range(n_styles):
            if i < coarse_ind:
                spatial = input_size // 16
            elif i < middle_ind:
                spatial = input_size // 8
            else:
                spatial = input_size // 4
            styles.append(GradualStyleBlock(fpn, hidden, style_dim, spatial))
        self.styles = nn.ModuleList(styles)
        self.latlayer1 = nn.Conv2d(channels[2], fpn, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(channels[1], fpn, 1, 1, 0)
        self.progressive_stage = progressive_stage_value(progressive_stage)

    def set_progressive_stage(self, stage: int | str) -> None:
        """0 = only w0 (all layers equal); k = deltas for layers 1..k; 'Inference' (18) = all."""
        self.progressive_stage = progressive_stage_value(stage)

    def body_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N,3,S,S] -> (c1 [N,C1,S/4,S/4], c2 [N,C2,S/8,S/8], c3 [N,C3,S/16,S/16])."""
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2:] == (self.input_size, self.input_size), \
            f"Encoder4Editing expects [N,3,{self.input_size},{self.input_size}], got {tuple(x.shape)}"
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                taps.append(x)
        c1, c2, c3 = taps
        return c1, c2, c3

    def forward(self, x: torch.Tensor,                    # [N,3,S,S] in [-1, 1]
                progressive_stage: int | str | None = None  # override of self.progressive_stage
                ) -> torch.Tensor:                         # -> [N,n_styles,style_dim] offsets (no latent_avg)
        return self.styles_from_features(*self.body_features(x), progressive_stage=progressive_stage)

    def styles_from_features(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,  # from body_features
                             progressive_stage: int | str | None = None) -> torch.Tensor:  # -> [N,n_styles,style_dim]
        """FPN + style heads on precomputed body features (forward = this after body_features)."""
        stage = self.progressive_stage if progressive_stage is None else progressive_stage_value(progressive_stage)
        w0 = self.styles[0](c3)
        ws = [w0]
        features, p2 = c3, None
        last = min(stage, self.n_styles - 1)
        for i in range(1, self.n_styles):
            if i > last:
                ws.append(w0)
                continue
            if i == self.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == self.middle_ind:
                features = _upsample_add(p2, self.latlayer2(c1))
            ws.append(w0 + self.styles[i](features))
        return torch.stack(ws, dim=1)


class E4EInverter(nn.Module):
    """Inverter interface over an e4e encoder: ``encode(x[N,3,R,R] in [-1,1], FFHQ-aligned) -> ws[N,n_styles,512]``
    with ``latent_avg`` added. ``x`` is resized to the encoder input (area when shrinking, bilinear when
    enlarging), so R is normally the generator resolution. With an identity head (our embedded encoder), the
    recogniser's embedding of ``x`` adds per-layer offsets (:mod:`.id_head`)."""

    def __init__(self, encoder: Encoder4Editing,          # the encoder (any n_styles / input size)
                 latent_avg: torch.Tensor | None,         # [n_styles,w_dim] or [w_dim]; None: codes are absolute
                 id_head: nn.Module | None = None,        # models.id_head.IdentityHead: embedding -> offsets
                 id_net: nn.Module | None = None):        # its recogniser (fr.Recogniser, frozen); with id_head
        super().__init__()
        self.encoder = encoder
        if (id_head is None) != (id_net is None):
            raise ValueError("an identity head needs its recogniser (id_net) and vice versa")
        self.id_head = id_head
        # kept out of state_dict: the recogniser is a separate, registry-loaded model, not encoder weights
        self._id_net = [id_net] if id_net is not None else []
        if latent_avg is None:
            latent_avg = torch.zeros(encoder.n_styles, encoder.style_dim)
        latent_avg = latent_avg.detach().to(torch.float32).clone()
        if latent_avg.ndim == 1:  # pSp-style [w_dim]: same mean for every layer
            latent_avg = latent_avg.unsqueeze(0).repeat(encoder.n_styles, 1)
        if tuple(latent_avg.shape) != (encoder.n_styles, encoder.style_dim):
            raise ValueError(f"latent_avg has shape {tuple(latent_avg.shape)}, expected "
                             f"({encoder.n_styles}, {encoder.style_dim})")
        self.register_buffer("latent_avg", latent_avg.to(next(encoder.parameters()).device))
        self.num_ws = encoder.n_styles
        self.w_dim = encoder.style_dim
        self.input_size = encoder.input_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,R,R] in [-1,1] -> [N,num_ws,w_dim]
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3], f"expected [N,3,R,R], got {tuple(x.shape)}"
        codes = self.encoder(resize_to(x, self.input_size))
        if self.id_head is not None:
            dev = next(iter(self.id_net.parameters()), x).device  # the shared recogniser stays on its own device
            codes = self.id_head.add_to(codes, self.id_net.embed_ffhq(x.to(dev)).to(codes.device))
        return codes + self.latent_avg.unsqueeze(0)

    @property
    def id_net(self) -> nn.Module | None:
        return self._id_net[0] if self._id_net else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


class E4ELoaded(NamedTuple):
    encoder: Encoder4Editing                            # eval mode, on the requested device
    latent_avg: torch.Tensor | None                     # [n_styles,512] (as stored); None if absent
    decoder_state_dict: dict[str, torch.Tensor] | None  # 'decoder.' stripped (rosinality Generator keys); None if absent
    opts: dict                                          # the stored training options (may be empty)

    def inverter(self) -> E4EInverter:
        """Inverter that adds latent_avg (unless the checkpoint was trained with start_from_latent_avg=False)."""
        add = self.opts.get("start_from_latent_avg", True) if isinstance(self.opts, dict) else True
        return E4EInverter(self.encoder, self.latent_avg if add else None)


def _infer_body(sd: Mapping[str, torch.Tensor]) -> dict:
    """Body configuration (units, channels, stem, mode) read from ``body.{i}.res_layer`` weight shapes."""
    depths, i = [], 0
    while f"body.{i}.res_layer.1.weight" in sd:
        w = sd[f"body.{i}.res_layer.1.weight"]
        if w.ndim != 4:
            break
        depths.append((int(w.shape[1]), int(w.shape[0])))
        i += 1
    if not depths:
        return {}
    units, channels = [], []
    for j, (cin, depth) in enumerate(depths):
        if j == 0 or depth != channels[-1]:
            units.append(1)
            channels.append(depth)
        else:
            units[-1] += 1
    mode = "ir_se" if "body.0.res_layer.5.fc1.weight" in sd else "ir"
    cfg = dict(units=tuple(units), channels=tuple(channels), stem_channels=depths[0][0], mode=mode)
    if mode == "ir_se":
        c = channels[0]
        cfg["se_reduction"] = max(1, c // int(sd["body.0.res_layer.5.fc1.weight"].shape[0]))
    return cfg


def load_e4e(path: str | os.PathLike,              # e4e_ffhq_encode.pt-style checkpoint
             device: str | torch.device = "cpu",
             input_size: int = 256,                # encoder input side (256 for every official e4e)
             progressive_stage: int | str = PROGRESSIVE_INFERENCE) -> E4ELoaded:
    """Load an e4e checkpoint ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}``.

    n_styles comes from ``latent_avg`` ([n_styles,512]), else ``opts['stylegan_size']``, else the ``styles.*``
    keys; the body layout is read from the weights (IR-SE50 for the official files). Raises
    CheckpointFormatError naming the file for a truncated file or a state dict of another architecture."""
    what = "e4e encoder checkpoint"
    ckpt = safe_torch_load(path, what)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointFormatError(
            f"{what}: {path} is not an e4e checkpoint: expected a dict with 'state_dict' holding 'encoder.*' "
            "(and optionally 'decoder.*') keys, plus 'latent_avg' and 'opts' (as e4e_ffhq_encode.pt).")
    full = ckpt["state_dict"]
    enc_sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
    dec_sd = {k[len("decoder."):]: v for k, v in full.items() if k.startswith("decoder.")} or None
    if not enc_sd:
        raise CheckpointFormatError(
            f"{what}: {path} has no 'encoder.*' keys in its state_dict (found e.g. {', '.join(list(full)[:3])}); "
            "expected an e4e checkpoint such as e4e_ffhq_encode.pt.")
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, dict):
        opts = dict(vars(opts)) if hasattr(opts, "__dict__") else {}

    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and (not isinstance(latent_avg, torch.Tensor) or latent_avg.ndim not in (1, 2)):
        raise CheckpointFormatError(f"{what}: {path}: 'latent_avg' must be a [n_styles,512] or [512] tensor, "
                                    f"got {getattr(latent_avg, 'shape', type(latent_avg).__name__)}")
    n_keys = len({k.split(".")[1] for k in enc_sd if k.startswith("styles.")})
    if isinstance(latent_avg, torch.Tensor) and latent_avg.ndim == 2:
        n_styles = int(latent_avg.shape[0])
    elif opts.get("stylegan_size"):
        n_styles = n_styles_for(int(opts["stylegan_size"]))
    else:
        n_styles = n_keys
    if n_keys != n_styles:
        raise CheckpointFormatError(
            f"{what}: {path} has {n_keys} style heads (styles.*) but latent_avg/opts say {n_styles} W+ layers.")
    if opts.get("start_from_latent_avg", True) and latent_avg is None:
        raise CheckpointFormatError(f"{what}: {path} has no 'latent_avg' ([{n_styles},512]) but was trained "
                                    "with start_from_latent_avg; the codes would be meaningless without it.")

    body = _infer_body(enc_sd)
    style_hidden = None
    if "styles.0.linear.weight" in enc_sd and enc_sd["styles.0.linear.weight"].ndim == 2:
        style_hidden = int(enc_sd["styles.0.linear.weight"].shape[1])
    style_dim = int(latent_avg.shape[-1]) if isinstance(latent_avg, torch.Tensor) else 512
    if len(body.get("units", ())) != 4:
        body = {}  # not a 4-stage IR body: build the default so check_state_dict reports what differs
    encoder = build_loaded(
        lambda: Encoder4Editing(n_styles=n_styles, input_size=input_size, style_dim=style_dim,
                                style_hidden=style_hidden, progressive_stage=progressive_stage, **body),
        enc_sd, path, f"{what} (encoder.* keys, {n_styles} styles)", device)
    return E4ELoaded(encoder, latent_avg.detach().clone() if latent_avg is not None else None, dec_sd, opts)
