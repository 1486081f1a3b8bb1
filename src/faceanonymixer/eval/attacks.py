"""Irreversibility attacks on protected faces (the attacker knows G, E and - in the strongest setting - the key).

Both attacks start by re-inverting the protected image with the encoder, ws = E(P_k(x)), and then act on the
*protected layers* (the W+ layers the key controls: the key layers and the optimised layers of the mixing plan;
for the paper's README assignment these are the identity band):

* ``avg``      (knows G and E): replace the protected layers by the generator's average latent
               ``latent_avg`` and synthesise. Whatever identity the untouched real layers still carry shows up.
* ``optimise`` (also knows the key): the attacker can compute the key's synthetic code w_k and hence the
               naive mix ``[ws real layers, w_k key layers]``, i.e. the identity the key injected. The protected
               layers are optimised (from ``latent_avg``) to *undo* that injection with the white-box recogniser:
               push the identity away from the naive mix and from the protected face (the method drove the
               protected face's identity orthogonal to the original, so the original lies there), while staying
               close to the protected image in pixels (pose, lighting, attributes) and near ``latent_avg``.

The output of each attack is matched to the original with every evaluation recogniser; success = match at the
clean FMR 1e-3 threshold (eval/report.py). These are heuristic attacks: a low success rate is evidence, not proof,
of irreversibility.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTACKS = ("avg", "optimise")


@dataclass
class AttackConfig:
    names: list[str] | None = None   # which attacks to run (default: all of ATTACKS)
    steps: int = 100                 # Adam steps of the 'optimise' attack
    lr: float = 0.05                 # Adam learning rate (W space)
    w_pixel: float = 1.0             # L1 pixel term to the protected image
    w_key: float = 1.0               # push identity away from the key's naive mix
    w_prot: float = 1.0              # push identity away from the protected face
    w_reg: float = 0.05              # mean squared distance of the optimised layers to latent_avg
    batch_size: int = 32


def protected_layers(plan) -> list[int]:
    """W+ indices controlled by the key: the mixing plan's key layers plus its optimised layers."""
    return sorted(set(plan.key_layers) | set(plan.optimised_layers))


def _check(x: torch.Tensor, generator) -> None:
    r = generator.resolution
    assert x.dim() == 4 and tuple(x.shape[1:]) == (3, r, r), f"expected x[N,3,{r},{r}], got {tuple(x.shape)}"


@torch.no_grad()
def attack_avg(protected: torch.Tensor, generator, inverter, layers: list[int]) -> torch.Tensor:
    """protected[N,3,R,R] in [-1,1] -> attacked image [N,3,R,R] in [-1,1] (key layers := latent_avg)."""
    _check(protected, generator)
    ws = inverter.encode(protected)                                  # [N, L, D]
    assert ws.shape[1:] == (generator.num_ws, generator.w_dim), tuple(ws.shape)
    ws = ws.clone()
    ws[:, layers] = generator.latent_avg.to(ws)[None, None, :]
    return generator.synthesis(ws, noise_mode="const").clamp(-1, 1)


def attack_optimise(protected: torch.Tensor, w_key: torch.Tensor, generator, inverter, recogniser, layers: list[int],
                    cfg: AttackConfig | None = None) -> torch.Tensor:
    """protected[N,3,R,R] in [-1,1]; w_key[N|1, L, D] (the key's synthetic code) -> attacked image [N,3,R,R].

    ``recogniser`` must be differentiable (the white-box loss network, e.g. 'sface')."""
    cfg = cfg or AttackConfig()
    _check(protected, generator)
    if not getattr(recogniser, "differentiable", False):
        raise ValueError(f"the optimisation attack needs a differentiable recogniser, got '{recogniser.name}'")
    with torch.no_grad():
        ws = inverter.encode(protected)                              # [N, L, D]
        naive = ws.clone()
        naive[:, layers] = w_key.to(ws).expand(ws.shape[0], -1, -1)[:, layers]
        e_key = recogniser.embed_ffhq(generator.synthesis(naive, noise_mode="const").clamp(-1, 1))
        e_prot = recogniser.embed_ffhq(protected)
    avg = generator.latent_avg.detach().to(ws)
    param = torch.nn.Parameter(avg[None, None, :].expand(ws.shape[0], len(layers), -1).clone())
    opt = torch.optim.Adam([param], lr=cfg.lr)
    for _ in range(max(0, int(cfg.steps))):
        cur = ws.clone()
        cur[:, layers] = param
        img = generator.synthesis(cur, noise_mode="const")
        e = recogniser.embed_ffhq(img)
        loss = (cfg.w_pixel * (img - protected).abs().mean(dim=(1, 2, 3))
                + cfg.w_key * F.relu(F.cosine_similarity(e, e_key, dim=1))
                + cfg.w_prot * F.relu(F.cosine_similarity(e, e_prot, dim=1))
                + cfg.w_reg * (param - avg).pow(2).mean(dim=(1, 2))).sum()
        # autograd.grad: gradients for the attack variable only (the shared generator's .grad stays untouched)
        (param.grad,) = torch.autograd.grad(loss, [param])
        opt.step()
    with torch.no_grad():
        cur = ws.clone()
        cur[:, layers] = param
        return generator.synthesis(cur, noise_mode="const").clamp(-1, 1)


def run_attack(name: str, protected: torch.Tensor, generator, inverter, layers: list[int], w_key=None,
               recogniser=None, cfg: AttackConfig | None = None) -> torch.Tensor:
    """Dispatch by name, in batches of ``cfg.batch_size``. w_key[N, L, D] (per image) for 'optimise'."""
    cfg = cfg or AttackConfig()
    outs = []
    bs = max(1, int(cfg.batch_size))
    for s in range(0, protected.shape[0], bs):
        x = protected[s:s + bs]
        if name == "avg":
            outs.append(attack_avg(x, generator, inverter, layers))
        elif name == "optimise":
            if w_key is None or recogniser is None:
                raise ValueError("the 'optimise' attack needs the key's code w_key and a white-box recogniser")
            outs.append(attack_optimise(x, w_key[s:s + bs], generator, inverter, recogniser, layers, cfg))
        else:
            raise ValueError(f"unknown attack '{name}' (known: {', '.join(ATTACKS)})")
    return torch.cat(outs) if outs else protected[:0].clone()
