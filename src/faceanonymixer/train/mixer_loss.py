"""Loss of the mixer trainer (docs/mixer.md, "Training"), apart from the training loop.

A batch holds P people x J photos x K keys; every protected image i has a person p(i) and a key k(i), and its
class is (p, k). On the loss recogniser's embeddings of the protected images (SFace, never an evaluation net):

* ``contrast``: supervised InfoNCE over (person, key) classes (temperature ``tau``): the photos of one person
  under one key pull together, the other people under the same key (the stolen-key case) push apart; with
  ``contrast_scope: all`` every other class (the same person under another key too) is a negative. Unlike
  fixed-margin hinges it cannot be met by lowering every cosine: only the gap between same-class and other-class
  similarities counts;
* ``consist``: 1 - cos over same-class pairs (the paper's L_idp across photos protected separately);
* ``same_key``: max(0, cos - margin) over pairs of different people under one key (stolen key);
* ``cross_key``: max(0, cos - margin) over pairs of one person under two keys (revocability / unlinkability);
* ``anon``: max(0, cos(protected, original) - margin) (the paper's L_anon, hinge form);
* ``attr``: the paper's L_attr with the attribute network in use (losses.attribute_loss on SFace early maps);
* ``embed``: supervised InfoNCE on the mixer's key-independent person directions u = normalize(f(e)) of a large
  separate batch of cached embeddings (``embed_people`` people x 2 photos): metric learning of f without the
  generator, thousands of photos a step for almost nothing (the image terms see 16 photos a step at ~5 s);
* ``prior``: mean squared distance of the written band from the mapping network's output (only the learnt carry
  of the photo's band can move it off W);
* ``adv``: non-saturating realism term softplus(-D(x)) of the generator's own trained discriminator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import attribute_loss


@dataclass
class MixerLossConfig:
    w_contrast: float = 1.0          # supervised InfoNCE over (person, key) classes
    tau: float = 0.1                 # its temperature
    contrast_scope: str = "key"      # 'key': an anchor's negatives are the other people under its own key only;
                                     # 'all': every other (person, key) class. Measured: with 'all' the net learnt
                                     # to let the key decide (alpha fell, same-key SFace cos 0.34 -> 0.61 in 40
                                     # steps): other-key negatives are easy, so clustering by key lowered the loss
    w_consist: float = 1.0           # 1 - cos, same person same key, different photos
    w_same_key: float = 1.0          # hinge, different people under one key (stolen key)
    same_key_margin: float = 0.3
    w_cross_key: float = 1.0         # hinge, one person under two keys
    cross_key_margin: float = 0.3
    w_anon: float = 1.0              # hinge, protected vs original
    anon_margin: float = 0.1
    w_attr: float = 0.005            # sface-early attribute distance (its raw scale is ~10-50)
    w_embed: float = 1.0             # InfoNCE on the person directions of a cached-embedding batch (no generator)
    embed_people: int = 128          # people in that batch (2 photos each)
    w_prior: float = 1.0             # band vs mapping output (learnt carry)
    w_adv: float = 0.1               # softplus(-D(protected))


def pair_masks(person: torch.Tensor, key: torch.Tensor) -> dict[str, torch.Tensor]:
    """person[N], key[N] long -> bool [N,N] masks (diagonal excluded): 'pos' same person and key, 'same_key'
    same key other person, 'cross_key' same person other key."""
    assert person.shape == key.shape and person.dim() == 1, (tuple(person.shape), tuple(key.shape))
    sp = person[:, None] == person[None, :]
    sk = key[:, None] == key[None, :]
    off = ~torch.eye(person.shape[0], dtype=torch.bool, device=person.device)
    return dict(pos=sp & sk & off, same_key=~sp & sk, cross_key=sp & ~sk)


def supcon(e: torch.Tensor, pos: torch.Tensor, tau: float, scope: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss. e[N,E] normalised, pos[N,N] bool (no diagonal), scope[N,N] bool (the pairs
    that enter an anchor's denominator; None = all) -> scalar (mean over anchors with at least one positive)."""
    n = e.shape[0]
    assert e.dim() == 2 and pos.shape == (n, n), (tuple(e.shape), tuple(pos.shape))
    s = e @ e.t() / tau
    drop = torch.eye(n, dtype=torch.bool, device=e.device)
    if scope is not None:
        assert scope.shape == (n, n) and not bool((pos & ~scope).any()), "positives must lie in the scope"
        drop = drop | ~scope
    s = s.masked_fill(drop, float("-inf"))
    logp = s - torch.logsumexp(s, dim=1, keepdim=True)
    cnt = pos.sum(1)
    has = cnt > 0
    if not bool(has.any()):
        return e.new_zeros(())
    per = -(logp.masked_fill(~pos, 0.0).sum(1)[has] / cnt[has])
    return per.mean()


def _masked_mean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return v[m].mean() if bool(m.any()) else v.new_zeros(())


def mixer_losses(cfg: MixerLossConfig,
                 e_p: torch.Tensor,            # [N,E] normalised embeddings of the protected images
                 e_r: torch.Tensor,            # [N,E] normalised embeddings of the originals
                 person: torch.Tensor,         # [N] long person index
                 key: torch.Tensor,            # [N] long key index
                 f_p: list | None = None,      # attribute features of the protected images (or None: no term)
                 f_r: list | None = None,      # ... of the originals
                 d_logits: torch.Tensor | None = None,  # [N,1] discriminator logits of the protected images
                 band: torch.Tensor | None = None,      # [N,B,D] written band
                 band_w: torch.Tensor | None = None,    # [N,D] the mapping output it started from
                 u_aux: torch.Tensor | None = None,     # [M,Z] person directions of the embedding batch
                 pid_aux: torch.Tensor | None = None,   # [M] long person index of that batch
                 ) -> dict[str, torch.Tensor]:
    """All terms and ``total`` (weighted sum); also the mean cosines ``cos_*`` as detached statistics."""
    n = e_p.shape[0]
    assert e_p.shape == e_r.shape and person.shape == (n,) and key.shape == (n,), \
        (tuple(e_p.shape), tuple(e_r.shape), tuple(person.shape), tuple(key.shape))
    m = pair_masks(person, key)
    cos = e_p @ e_p.t()
    z = e_p.new_zeros(())
    out: dict[str, torch.Tensor] = {}
    if cfg.contrast_scope not in ("key", "all"):
        raise ValueError(f"loss.contrast_scope must be 'key' or 'all', got {cfg.contrast_scope!r}")
    scope = (key[:, None] == key[None, :]) if cfg.contrast_scope == "key" else None
    out["contrast"] = supcon(e_p, m["pos"], cfg.tau, scope)
    out["consist"] = _masked_mean(1 - cos, m["pos"])
    out["same_key"] = _masked_mean((cos - cfg.same_key_margin).clamp_min(0), m["same_key"])
    out["cross_key"] = _masked_mean((cos - cfg.cross_key_margin).clamp_min(0), m["cross_key"])
    anon_cos = (e_p * e_r).sum(1)
    out["anon"] = (anon_cos - cfg.anon_margin).clamp_min(0).mean()
    out["attr"] = attribute_loss(f_p, f_r).mean() if f_p is not None and cfg.w_attr > 0 else z
    out["adv"] = F.softplus(-d_logits).mean() if d_logits is not None else z
    if band is not None:
        assert band_w is not None and band.dim() == 3 and band_w.shape == (n, band.shape[2]), \
            (tuple(band.shape), None if band_w is None else tuple(band_w.shape))
        out["prior"] = (band - band_w[:, None, :]).pow(2).mean()
    else:
        out["prior"] = z
    if u_aux is not None:
        assert pid_aux is not None and pid_aux.shape == (u_aux.shape[0],), (tuple(u_aux.shape),)
        pos = (pid_aux[:, None] == pid_aux[None, :]) & ~torch.eye(len(pid_aux), dtype=torch.bool,
                                                                    device=pid_aux.device)
        out["embed"] = supcon(u_aux, pos, cfg.tau)
    else:
        out["embed"] = z
    out["total"] = (cfg.w_contrast * out["contrast"] + cfg.w_consist * out["consist"]
                    + cfg.w_same_key * out["same_key"] + cfg.w_cross_key * out["cross_key"]
                    + cfg.w_anon * out["anon"] + cfg.w_attr * out["attr"] + cfg.w_prior * out["prior"]
                    + cfg.w_adv * out["adv"] + cfg.w_embed * out["embed"])
    with torch.no_grad():
        out["cos_pos"] = _masked_mean(cos, m["pos"])
        out["cos_same_key"] = _masked_mean(cos, m["same_key"])
        out["cos_cross_key"] = _masked_mean(cos, m["cross_key"])
        out["cos_anon"] = anon_cos.mean()
    return out
