"""Multi-objective refinement of the mixed codes, several people in one batched pass.

Every person is a ``Group``: the aligned originals ``x_ref[n,3,R,R]``, their inverted codes ``w_real[n,L,D]``
and the person's key code ``w_key[1,L,D]``. ``optimise`` stacks the members of all groups into one batch,
runs Adam (lr 0.01, MultiStepLR at 0.75/0.9 of the steps, gamma 0.8) on the optimised layers only, and sums the
per-person losses; because Adam is element-wise and the loss is a sum over people, this is the same optimisation
as one optimiser per person (the paper's), just one generator/recogniser forward pass per step for everyone.

A person with a single image gets ``augment_copies`` augmented copies of it (``augment``: flip p=0.5,
rotation U(-10,10) deg, colour jitter 0.15/0.15/0.10/0.03, crop scale U(0.85,1)), seeded from key and image, so
that L_idp is defined; the copies share the inverted code as initialisation and only the first member is output.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .losses import (LossConfig, anchor_loss, anonymity_loss, attribute_loss, identity_consistency_loss,
                     separation_loss)
from .mixing import MixedLatent, MixPlan, mix


@dataclass
class OptimConfig:
    steps: int = 50                                  # 0 = no refinement (the naive-mix ablation)
    lr: float = 0.01
    milestones: list[float] = field(default_factory=lambda: [0.75, 0.9])  # fractions of steps
    gamma: float = 0.8
    augment_copies: int = 5                          # copies for single-image people (0 = off)
    noise_mode: str = "const"                        # generator noise: const keeps the output deterministic

    # checked by config.load; the upper bounds refuse values that would only exhaust memory or time
    LIMITS = dict(steps=(0, 100_000), lr=(0.0, None), gamma=(0.0, None), augment_copies=(0, 64))


@dataclass
class Group:
    """One person's inputs to the optimisation."""
    x_ref: torch.Tensor            # [n,3,R,R] aligned originals in [-1,1] (augmented copies included)
    w_real: torch.Tensor           # [n,L,D] inverted codes
    w_key: torch.Tensor            # [1,L,D] key code
    n_out: int = 0                 # leading members that are real outputs (0 = all)
    w_decoys: torch.Tensor | None = None  # [K,L,D] decoy key codes for L_sep (None = off)
    w_start: torch.Tensor | None = None   # [n,L,D] start codes (the mixer's output) instead of the mix of
                                          # w_real and w_key (None = the paper's start)

    def __post_init__(self):
        n = self.x_ref.shape[0]
        assert self.w_real.shape[0] == n and self.w_key.shape[0] == 1, (tuple(self.x_ref.shape), tuple(self.w_real.shape))
        assert self.w_start is None or self.w_start.shape == self.w_real.shape, \
            (tuple(self.w_start.shape), tuple(self.w_real.shape))
        self.n_out = self.n_out or n


@dataclass
class OptimResult:
    ws: list[torch.Tensor]           # per group [n_out,L,D] final codes (detached)
    images: list[torch.Tensor]       # per group [n_out,3,R,R] in [-1,1] (clamped)
    history: list[dict]              # per step: total loss and mean terms
    seconds: float


# -- single-image augmentation -----------------------------------------------------------------------------
def augment(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """x[1,3,R,R] in [-1,1] -> [n,3,R,R] augmented copies, deterministic given ``seed`` (CPU generator)."""
    assert x.dim() == 4 and x.shape[0] == 1 and x.shape[1] == 3, tuple(x.shape)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(n, 9, generator=g, dtype=torch.float64)
    flip = u[:, 0] < 0.5
    ang = (u[:, 1] * 20 - 10) * math.pi / 180
    s = 0.85 + 0.15 * u[:, 2]                               # crop side (fraction of the image)
    tx = (u[:, 3] * 2 - 1) * (1 - s)                        # crop centre, kept inside the image
    ty = (u[:, 4] * 2 - 1) * (1 - s)
    bri = 1 + (u[:, 5] * 2 - 1) * 0.15
    con = 1 + (u[:, 6] * 2 - 1) * 0.15
    sat = 1 + (u[:, 7] * 2 - 1) * 0.10
    hue = (u[:, 8] * 2 - 1) * 0.03
    cos, sin = torch.cos(ang), torch.sin(ang)
    fx = torch.where(flip, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)      # output coords -> input coords: crop o rotate o flip
    theta[:, 0, 0] = s * cos * fx
    theta[:, 0, 1] = -s * sin
    theta[:, 1, 0] = s * sin * fx
    theta[:, 1, 1] = s * cos
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    xs = x.detach().to("cpu", torch.float32).expand(n, -1, -1, -1)
    grid = F.affine_grid(theta.float(), list(xs.shape), align_corners=False)
    y = F.grid_sample(xs, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    y = (y + 1) / 2                                         # colour jitter in [0,1]
    f = lambda t: t.float().view(n, 1, 1, 1)  # noqa: E731
    y = (y * f(bri)).clamp(0, 1)
    grey = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2])[:, None]
    y = ((y - grey.mean((2, 3), keepdim=True)) * f(con) + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
    grey = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2])[:, None]
    y = ((y - grey) * f(sat) + grey).clamp(0, 1)
    y = _hue_shift(y, hue.float())
    return (y * 2 - 1).to(x.device)


def _hue_shift(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate hue by h (fraction of a turn) in YIQ space; y[N,3,H,W] in [0,1]."""
    m = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,njhw->nihw", m, y)
    a = h * 2 * math.pi
    c, s = torch.cos(a).view(-1, 1, 1), torch.sin(a).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq).clamp(0, 1)


def single_image_group(x: torch.Tensor, w_real: torch.Tensor, w_key: torch.Tensor, copies: int, seed: int) -> Group:
    """Group for a one-image person: the image plus ``copies`` augmented views, all initialised from w_real."""
    assert x.shape[0] == 1 and w_real.shape[0] == 1
    if copies <= 0:
        return Group(x, w_real, w_key, n_out=1)
    xa = torch.cat([x, augment(x, copies, seed)], 0)
    return Group(xa, w_real.expand(1 + copies, -1, -1).clone(), w_key, n_out=1)


# -- the optimisation ---------------------------------------------------------------------------------------
def _embed_feats(id_net, attr, x, need_attr: bool):
    if need_attr and hasattr(attr, "embed_and_features") and attr.recogniser is id_net:
        return attr.embed_and_features(x)
    e = id_net.embed_ffhq(x)
    return e, (attr.features(x) if need_attr else None)


def optimise(generator, id_net, attr, groups: list[Group], plan: MixPlan,
             loss_cfg: LossConfig | None = None, cfg: OptimConfig | None = None) -> OptimResult:
    """Refine the mixed codes of all ``groups`` jointly. id_net: a differentiable Recogniser; attr: an attribute
    encoder (``features``) or None. Returns the final codes and images of each group's output members."""
    loss_cfg = loss_cfg or LossConfig()
    cfg = cfg or OptimConfig()
    t0 = time.perf_counter()
    dev = generator.latent_avg.device
    sizes = [g.x_ref.shape[0] for g in groups]
    gid = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)]).to(dev)
    x_ref = torch.cat([g.x_ref for g in groups]).to(dev)
    w_init, mask = mix(torch.cat([g.w_real for g in groups]).to(dev),
                       torch.cat([g.w_key.expand(n, -1, -1) for g, n in zip(groups, sizes)]).to(dev), plan)
    if any(g.w_start is not None for g in groups):     # refinement from given codes (engine 'mixer')
        w_init = torch.cat([g.w_start.to(dev, w_init.dtype) if g.w_start is not None else w_init[a:a + n]
                            for g, a, n in zip(groups, [sum(sizes[:i]) for i in range(len(sizes))], sizes)])
    latent = MixedLatent(w_init, mask)
    frozen = [p for p in generator.parameters() if p.requires_grad]   # no gradients for G's weights
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _run(generator, id_net, attr, groups, plan, loss_cfg, cfg, latent, x_ref, gid, sizes, dev, t0)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run(generator, id_net, attr, groups, plan, loss_cfg, cfg, latent, x_ref, gid, sizes, dev, t0) -> OptimResult:
    need_attr = attr is not None and loss_cfg.w_attr > 0
    with torch.no_grad():
        e_ref, f_ref = _embed_feats(id_net, attr, x_ref, need_attr)
        e_dec = None
        if loss_cfg.w_sep > 0 and all(g.w_decoys is not None for g in groups):
            e_dec = _decoy_embeddings(generator, id_net, groups, sizes, plan, cfg, dev)

    history = []
    if cfg.steps > 0 and latent.idx:
        opt = torch.optim.Adam(latent.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(m * cfg.steps) for m in cfg.milestones], gamma=cfg.gamma)
        for _ in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            x_p = generator.synthesis(latent(), noise_mode=cfg.noise_mode)
            e_p, f_p = _embed_feats(id_net, attr, x_p, need_attr)
            l_anon = anonymity_loss(e_p, e_ref, loss_cfg.margin, loss_cfg.anon_form)
            l_idp = identity_consistency_loss(e_p, gid, len(groups))
            total = loss_cfg.w_anon * l_anon.sum() + loss_cfg.w_idp * l_idp.sum()
            rec = dict(anon=l_anon.detach().mean().item(), idp=l_idp.detach().mean().item())
            if need_attr:
                l_attr = attribute_loss(f_p, f_ref)
                total = total + loss_cfg.w_attr * l_attr.sum()
                rec["attr"] = l_attr.detach().mean().item()
            if loss_cfg.w_anchor > 0:
                l_anc = anchor_loss(latent.param, latent.base[:, latent.idx], gid, len(groups))
                total = total + loss_cfg.w_anchor * l_anc.sum()
                rec["anchor"] = l_anc.detach().mean().item()
            if e_dec is not None:
                l_sep = separation_loss(e_p, e_dec, loss_cfg.sep_margin)
                total = total + loss_cfg.w_sep * l_sep.sum()
                rec["sep"] = l_sep.detach().mean().item()
            total.backward()
            opt.step()
            sched.step()
            rec["total"] = total.detach().item()
            history.append(rec)
    with torch.no_grad():
        ws = latent()
        keep = torch.cat([torch.arange(g.n_out) + sum(sizes[:i]) for i, g in enumerate(groups)]).to(dev)
        ws_out = ws[keep]
        img = generator.synthesis(ws_out, noise_mode=cfg.noise_mode).clamp(-1, 1)
    outs_ws, outs_img, o = [], [], 0
    for g in groups:
        outs_ws.append(ws_out[o:o + g.n_out].detach())
        outs_img.append(img[o:o + g.n_out].detach())
        o += g.n_out
    return OptimResult(outs_ws, outs_img, history, time.perf_counter() - t0)


@torch.no_grad()
def _decoy_embeddings(generator, id_net, groups, sizes, plan, cfg, dev) -> torch.Tensor:
    """[M,K,D]: embeddings of every member's real code mixed with each of its group's decoy keys (naive mix)."""
    rows = []
    for g, n in zip(groups, sizes):
        K = g.w_decoys.shape[0]
        per_k = []
        for k in range(K):
            w, _ = mix(g.w_real.to(dev), g.w_decoys[k:k + 1].to(dev), plan)
            per_k.append(id_net.embed_ffhq(generator.synthesis(w, noise_mode=cfg.noise_mode).clamp(-1, 1)))
        rows.append(torch.stack(per_k, 1))   # [n,K,D]
    return torch.cat(rows, 0)
