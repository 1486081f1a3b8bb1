"""Latent mixing: which W+ layers come from the real face, which from the key, which are optimised.

The paper's generator has 18 W+ layers (1024 px). Its two published layer assignments (the paper's README
and its released code; docs/method.md):

=========  ===================  ==============================  ===============
name       layers 0-2 (coarse)  layers 3-7 (identity band)      layers 8-17
=========  ===================  ==============================  ===============
readme     real, frozen         key, **optimised** (default)    real, frozen
code       key, frozen          real, **optimised**             real, frozen
=========  ===================  ==============================  ===============

Scaling rule for other resolutions (documented in docs/method.md). W+ index ``i`` modulates resolution
``res(i) = 4`` for i = 0 and ``min(2 ** (2 + ceil(i / 2)), R)`` otherwise (NVlabs/rosinality layout: each block has an
upsampling conv (odd i), a second conv (even i), and the last index is the final ToRGB). Let
``o(i) = log2(res(i)) - 2`` (octaves above 4 px) and ``O = log2(R) - 2``. The paper's 1024-px split sits at relative
log-resolution 1/4 (16 px) and 1/2 (64 px):

* coarse band:   ``o(i) < O / 4``
* identity band: ``o(i) < O / 2``, or ``o(i) == O / 2`` and i is the block's upsampling conv (odd i)
* fine band:     everything else.

This reproduces 0-2 / 3-7 / 8-17 at 1024 px exactly; 256 px (14 layers) gives 0-2 / 3-5 / 6-13; our 64-px
generator (10 layers) gives 0 / 1-3 / 4-9 (4 px coarse; 8 px and the 16-px upsampling conv carry identity).
A generator's weights file may name its own band (``meta.identity_layers``, set from measurements: our embedded
64-px generator uses 1-6, see docs/method.md); an explicit ``MixingConfig.identity_layers`` overrides both.
"""
from __future__ import annotations

from .config import ConfigError
import math
from dataclasses import dataclass

import torch

ASSIGNMENTS = ("readme", "code")


@dataclass
class MixingConfig:
    assignment: str = "readme"              # 'readme' (paper README, default) or 'code' (released code)
    identity_layers: list[int] | None = None  # explicit identity band [first, ..., last]; None = the scaling rule


def layer_resolution(i: int, resolution: int) -> int:
    """Resolution modulated by W+ index ``i`` of a generator with output ``resolution``."""
    return 4 if i == 0 else min(2 ** (2 + math.ceil(i / 2)), int(resolution))


def layer_bands(num_ws: int, resolution: int | None = None) -> tuple[list[int], list[int], list[int]]:
    """(coarse, identity, fine) W+ index lists for a generator with ``num_ws`` layers (resolution inferred from
    num_ws = 2*log2(R) - 2 when not given)."""
    if resolution is None:
        resolution = 2 ** ((num_ws + 2) // 2)
    R = int(resolution)
    assert num_ws == 2 * int(round(math.log2(R))) - 2, (num_ws, R)
    O = math.log2(R) - 2
    coarse, ident, fine = [], [], []
    for i in range(num_ws):
        o = math.log2(layer_resolution(i, R)) - 2
        upsampling_conv = (i % 2 == 1) and i < num_ws - 1
        if o < O / 4 - 1e-9:
            coarse.append(i)
        elif o < O / 2 - 1e-9 or (abs(o - O / 2) < 1e-9 and upsampling_conv):
            ident.append(i)
        else:
            fine.append(i)
    return coarse, ident, fine


@dataclass(frozen=True)
class MixPlan:
    """Which source each W+ layer takes and which layers are optimised (sorted index tuples)."""
    num_ws: int
    key_layers: tuple[int, ...]        # copied from the key's code
    optimised_layers: tuple[int, ...]  # trainable; all other layers frozen
    assignment: str = "readme"

    @property
    def real_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_ws) if i not in self.key_layers)

    def mask(self, device=None) -> torch.Tensor:
        """Bool [num_ws]: True where a layer is optimised."""
        m = torch.zeros(self.num_ws, dtype=torch.bool, device=device)
        m[list(self.optimised_layers)] = True
        return m

    def key_mask(self, device=None) -> torch.Tensor:
        """Bool [num_ws]: True where a layer starts from the key's code."""
        m = torch.zeros(self.num_ws, dtype=torch.bool, device=device)
        m[list(self.key_layers)] = True
        return m

    def describe(self) -> dict:
        return dict(assignment=self.assignment, num_ws=self.num_ws, key_layers=list(self.key_layers),
                    optimised_layers=list(self.optimised_layers))


def make_plan(num_ws: int, config: MixingConfig | None = None, resolution: int | None = None,
              generator_band: list[int] | None = None,   # the generator's measured band (weights metadata)
              ) -> MixPlan:
    """The layer plan for a generator. Identity band, first match wins: ``config.identity_layers``; the band the
    generator's weights file names (``generator_band``, chosen by measurement for that model); the scaling rule
    of the module docstring (which gives the paper's 3-7 for the official 1024-px generator)."""
    cfg = config or MixingConfig()
    if cfg.assignment not in ASSIGNMENTS:
        raise ConfigError(f"mixing.assignment must be one of {ASSIGNMENTS}, got '{cfg.assignment}'")
    coarse, ident, _ = layer_bands(num_ws, resolution)
    explicit = cfg.identity_layers if cfg.identity_layers is not None else generator_band
    if explicit is not None:
        ident = sorted(int(i) for i in explicit)
        if not ident or ident[0] < 1 or ident[-1] >= num_ws - 1:
            raise ConfigError(f"mixing.identity_layers {list(explicit)} must lie within 1..{num_ws - 2}")
        coarse = list(range(ident[0]))
    if cfg.assignment == "readme":
        return MixPlan(num_ws, tuple(ident), tuple(ident), "readme")
    return MixPlan(num_ws, tuple(coarse), tuple(ident), "code")


def mix(w_real: torch.Tensor, w_key: torch.Tensor, plan: MixPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard layer-wise swap. w_real[N,L,D], w_key[1|N,L,D] -> (w_init[N,L,D], optimised mask[L] bool)."""
    assert w_real.dim() == 3 and w_real.shape[1] == plan.num_ws, tuple(w_real.shape)
    assert w_key.dim() == 3 and w_key.shape[1:] == w_real.shape[1:], (tuple(w_key.shape), tuple(w_real.shape))
    km = plan.key_mask(w_real.device)[None, :, None]
    w = torch.where(km, w_key.to(w_real.dtype).expand_as(w_real), w_real)
    return w.detach().clone(), plan.mask(w_real.device)


class MixedLatent(torch.nn.Module):
    """Trainable mixed code: ``forward() -> ws[N,L,D]`` where only the optimised layers carry gradients.

    The frozen layers are a buffer; the trainable parameter holds just the optimised layers, so gradients
    (and Adam updates) are exactly zero everywhere else by construction."""

    def __init__(self, w_init: torch.Tensor, mask: torch.Tensor):  # w_init[N,L,D]; mask[L] bool (optimised layers)
        super().__init__()
        assert w_init.dim() == 3 and mask.shape == (w_init.shape[1],), (tuple(w_init.shape), tuple(mask.shape))
        self.register_buffer("base", w_init.detach().clone())
        self.register_buffer("mask", mask.clone())
        self.idx = torch.nonzero(mask).flatten().tolist()
        self.param = torch.nn.Parameter(w_init.detach()[:, self.idx].clone())   # [N, len(idx), D]

    def forward(self) -> torch.Tensor:
        ws = self.base.clone()
        if self.idx:
            ws[:, self.idx] = self.param
        return ws
