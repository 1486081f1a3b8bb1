"""The multi-objective loss and the attribute encoders behind L_attr.

    L = w_anon * sum_i L_anon(i) + w_attr * sum_i L_attr(i) + w_idp * L_idp(person)   [+ w_sep * sum_i L_sep(i)]

* ``L_anon = |cos(ID(x_p), ID(x_r)) - m|`` (released code; ``anon_form='hinge'``: ``max(0, cos - m)``), m = 0.
* ``L_idp`` = mean over pairs i<j of ``||ID(x_p^i) - ID(x_p^j)||_2`` (normalised embeddings); 0 for one image.
* ``L_attr`` = distance between attribute features of x_r and x_p (see ``get_attribute_encoder``).
* ``L_sep`` (off by default; ablation): ``max(0, cos(ID(x_p), ID(x_d)) - sep_margin)`` averaged over decoy
  protections x_d of the same face under ``sep_decoys`` other keys derived from the user's key.

Default attribute network ('sface-early'): early/mid feature maps of the SFace recogniser (MobileFaceNet body:
stages at 56x56x128, 28x28x256 and the first 14x14x512 block), average-pooled to 14x14 and compared like the
paper compares FaRL tokens: sum over the 196 positions of the channel-mean absolute difference, averaged over
the three taps. Why: it is differentiable and offline (registry package, loaded anyway for L_anon, so one forward
pass gives both), it is *not* an evaluation recogniser (dlib-resnet and faceplugin-fr are), and early/mid
layers of a face CNN respond to pose, expression, illumination and layout far more than to identity, which
is decided in the deeper 7x7 stages we leave out. 'none' disables L_attr.

'farl-vit-b16' is the paper's network: FaRL ViT-B/16 (user-supplied ``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``)
loaded into CLIP's image tower (``models/clip_vit.py``); the features are the 197 tokens after the last
transformer block, before ``ln_post``, on the image resized to 224 and centre-cropped, mapped to [0,1] with no
mean/std normalisation (as the official attribute loss feeds FaRL).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import FaceAnonyMixerError
from .fr import get_recogniser
from .models.clip_vit import VisionTransformer, load_clip_visual
from .registry import locate

ATTR_NETS = ("sface-early", "none", "farl-vit-b16")


@dataclass
class LossConfig:
    w_anon: float = 10.0           # lambda_id
    w_idp: float = 10.0            # lambda_cons
    w_attr: float = 0.15           # lambda_attr
    margin: float = 0.0            # m in L_anon
    anon_form: str = "abs"         # 'abs' |cos - m| (released code) or 'hinge' max(0, cos - m)
    attr_net: str = "sface-early"  # see ATTR_NETS
    w_sep: float = 0.0             # cross-key separation weight (0 = off, the paper's setting)
    sep_decoys: int = 4            # decoy keys for L_sep
    sep_margin: float = 0.0
    w_anchor: float = 0.0          # key-anchor weight: mean squared drift of the optimised layers from their start
                                   # (0 = off, the paper); for lone probes (docs/method.md, "Known limits")

    LIMITS = dict(sep_decoys=(0, 64))  # checked by config.load (each decoy is another optimised copy)


# -- the loss terms (pure functions on embeddings / features) ---------------------------------------------
def anonymity_loss(e_p: torch.Tensor, e_r: torch.Tensor, margin: float = 0.0, form: str = "abs") -> torch.Tensor:
    """e_p[N,D], e_r[N,D] L2-normalised -> [N]."""
    assert e_p.shape == e_r.shape and e_p.dim() == 2, (tuple(e_p.shape), tuple(e_r.shape))
    cos = (e_p * e_r).sum(1)
    if form == "abs":
        return (cos - margin).abs()
    if form == "hinge":
        return (cos - margin).clamp_min(0)
    raise FaceAnonyMixerError(f"loss.anon_form must be 'abs' or 'hinge', got '{form}'")


def anchor_loss(w_opt: torch.Tensor, w_start: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """w_opt, w_start [N,k,D] (the optimised layers now and at the start) -> [n_groups]: per person, the mean
    squared drift. Why: a probe protected alone drifts from the key code in its own direction (nothing ties it
    to the person's other sessions, unlike L_idp within a session); the anchor bounds that drift."""
    assert w_opt.shape == w_start.shape and w_opt.dim() == 3, (tuple(w_opt.shape), tuple(w_start.shape))
    per_member = (w_opt - w_start).pow(2).mean(dim=(1, 2))                                   # [N]
    total = per_member.new_zeros(n_groups).index_add(0, groups, per_member)
    count = per_member.new_zeros(n_groups).index_add(0, groups, torch.ones_like(per_member))
    return total / count


def identity_consistency_loss(e_p: torch.Tensor, groups: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """e_p[N,D] normalised, groups[N] long (person index) -> [G] mean pairwise L2 per group (0 if < 2 members)."""
    assert e_p.dim() == 2 and groups.shape == (e_p.shape[0],), (tuple(e_p.shape), tuple(groups.shape))
    G = int(n_groups if n_groups is not None else (int(groups.max()) + 1 if len(groups) else 0))
    out = []
    for g in range(G):
        idx = torch.nonzero(groups == g).flatten()
        if len(idx) < 2:
            out.append(e_p.new_zeros(()))
            continue
        i, j = zip(*itertools.combinations(idx.tolist(), 2))
        d = (e_p[list(i)] - e_p[list(j)]).pow(2).sum(1).clamp_min(1e-12).sqrt()  # clamp: finite grad at 0
        out.append(d.mean())
    return torch.stack(out) if out else e_p.new_zeros(0)


def separation_loss(e_p: torch.Tensor, e_decoy: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """e_p[N,D], e_decoy[N,K,D] (normalised) -> [N] mean_k max(0, cos(e_p, e_decoy_k) - margin)."""
    assert e_decoy.dim() == 3 and e_decoy.shape[0] == e_p.shape[0], (tuple(e_p.shape), tuple(e_decoy.shape))
    cos = (e_p[:, None, :] * e_decoy).sum(-1)
    return (cos - margin).clamp_min(0).mean(1)


def attribute_loss(f_p: list[torch.Tensor], f_r: list[torch.Tensor]) -> torch.Tensor:
    """Feature lists (each [N,C,h,w] or [N,T,C]) -> [N]: per tap, sum over positions of the channel-mean
    absolute difference (the paper's FaRL token L1), averaged over taps."""
    assert len(f_p) == len(f_r) and f_p, (len(f_p), len(f_r))
    terms = []
    for a, b in zip(f_p, f_r):
        assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
        d = (a - b).abs()
        if d.dim() == 4:   # [N,C,h,w]: channel mean, sum over positions
            terms.append(d.mean(1).flatten(1).sum(1))
        else:              # [N,T,C] tokens
            terms.append(d.mean(-1).sum(1))
    return torch.stack(terms, 0).mean(0)


# -- attribute encoders ------------------------------------------------------------------------------------
class SFaceEarlyFeatures(torch.nn.Module):
    """Early/mid SFace feature maps as an attribute encoder (and, in the same pass, the SFace embedding).

    ``features(x[N,3,R,R] in [-1,1], FFHQ-aligned) -> list of [N,C,14,14]``;
    ``embed_and_features(x) -> ([N,128] normalised, features)``. Frozen; gradients flow to x."""

    name = "sface-early"
    TAPS = ("conv_4_relu", "conv_6_relu", "conv_7_relu")   # 56x56x128, 28x28x256, 14x14x512
    POOL = 14

    def __init__(self, recogniser=None):  # recogniser: a loaded fr 'sface' Recogniser (default: get_recogniser)
        super().__init__()
        if recogniser is None:
            recogniser = get_recogniser("sface")
        if getattr(recogniser, "name", None) != "sface":
            raise FaceAnonyMixerError("attr_net 'sface-early' needs the sface recogniser")
        self.recogniser = recogniser
        graph = recogniser.net
        names = [outs[0] for _, _, outs, _ in graph._nodes]
        missing = [t for t in self.TAPS if t not in names]
        if missing:
            raise FaceAnonyMixerError(f"the SFace graph lacks the attribute taps {missing}; the model file is not "
                                      "the registry's face_recognition_sface_2021dec_int8bq.onnx")
        self._graph = graph
        self._last = max(names.index(t) for t in self.TAPS)

    def _run(self, x: torch.Tensor, full: bool):
        """x in [-1,1] FFHQ -> (raw graph output or None, {tap: tensor})."""
        faces = self.recogniser.ffhq_to_arcface(x)                 # [N,3,112,112] in [0,1]
        bgr255 = faces.flip(1) * 255.0                             # SFace's own input convention
        graph = copy.copy(self._graph)                             # shallow: shares the weights
        if not full:
            graph._nodes = self._graph._nodes[: self._last + 1]
            graph.output_name = self.TAPS[-1]
        seen = {}
        cls_get = type(self._graph)._get

        def _get(env, name):                                       # capture the executor's tensor table
            seen["env"] = env
            return cls_get(graph, env, name)

        graph._get = _get
        out = graph(bgr255)
        env = seen.pop("env")
        feats = [F.adaptive_avg_pool2d(env[t], self.POOL) for t in self.TAPS]
        return (out if full else None), feats

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._run(x, full=False)[1]

    def embed_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, feats = self._run(x, full=True)
        return F.normalize(out, dim=1), feats


class FaRLTokens(torch.nn.Module):
    """FaRL ViT-B/16 tokens as an attribute encoder (the paper's L_attr network).

    ``features(x[N,3,R,R] in [-1,1], FFHQ-aligned) -> [tokens [N,1+P,W]]`` (one tap: the tokens after the last
    transformer block, before ln_post; [N,197,768] for FaRL ViT-B/16). Frozen; gradients flow to x."""

    name = "farl-vit-b16"

    def __init__(self,
                 net: VisionTransformer | None = None,  # a loaded CLIP image tower (default: the registry's FaRL file)
                 path=None):                             # explicit FaRL .pth (else $FACEANONYMIXER_HOME / data folder)
        super().__init__()
        if net is None:
            path = locate("farl-vit-b16", explicit=path)   # MissingWeightsError says where to get the file
            net = load_clip_visual(path, what="FaRL ViT-B/16 (farl-vit-b16)")
        if not isinstance(net, VisionTransformer):
            raise FaceAnonyMixerError(
                f"attr_net 'farl-vit-b16' needs a CLIP VisionTransformer, got {type(net).__name__}")
        self.net = net.eval().requires_grad_(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,H,W] in [-1,1] -> [N,3,S,S] in [0,1]
        """[-1,1] -> [0,1]; resize the shorter side to S = the network's input size (bilinear, antialiased when
        shrinking, like torchvision's Resize on tensors) and centre-crop S x S. No mean/std normalisation."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N,3,H,W], got {tuple(x.shape)}"
        s = self.net.input_resolution
        x = (x + 1.0) * 0.5
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            nh, nw = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=min(h, w) > s)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[:, :, top:top + s, left:left + s]
        return x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = next(self.net.parameters())
        if p.device != x.device:   # follow the caller's device (the Protector hands us its images, not a device)
            self.net.to(x.device)
        return [self.net.tokens(self.preprocess(x).to(p.dtype))]


def get_attribute_encoder(name: str, recogniser=None, path=None):
    """Attribute encoder by name (None for 'none'). ``recogniser``: an sface Recogniser to share;
    ``path``: explicit weights file for 'farl-vit-b16'."""
    if name == "none":
        return None
    if name == "sface-early":
        if recogniser is not None and getattr(recogniser, "name", None) != "sface":
            recogniser = None
        return SFaceEarlyFeatures(recogniser)
    if name == "farl-vit-b16":
        return FaRLTokens(path=path)
    raise FaceAnonyMixerError(f"unknown attr_net '{name}'; choose one of {', '.join(ATTR_NETS)}")
