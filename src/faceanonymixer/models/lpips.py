"""LPIPS (Zhang et al., CVPR 2018), version 0.1: the paper's inversion-refinement distance.

``d(x0, x1) = sum_l mean_{h,w} < w_l , (n(f_l(x0)) - n(f_l(x1)))^2 >`` where ``f_l`` are five ReLU taps of an
ImageNet backbone (VGG-16: relu1_2 .. relu5_3; AlexNet: relu1 .. relu5) applied to the input shifted and scaled
per channel (``(x - SHIFT) / SCALE``, inputs in [-1, 1]), ``n`` divides each position's feature vector by its
L2 norm (+1e-10), and ``w_l`` is a learned non-negative 1x1 linear head (no bias).

Clean-room from the published definition; checked numerically (values and input gradients) against the
reference ``lpips`` package on random backbone weights (tests/data/lpips/README.md).

Files (``models.lpips.load_lpips``):

* the backbone is torchvision's ImageNet state dict (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``;
  user-supplied, registry ``vgg16-imagenet`` / ``alexnet-imagenet``): only ``features.*`` is read, the
  classifier is ignored;
* the heads are our safetensors conversion of the package's ``weights/v0.1/{vgg,alex}.pth`` (BSD-2-Clause;
  shipped, registry ``lpips-vgg`` / ``lpips-alex``), keys ``lin{0..4}.weight`` [1,C,1,1].
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..errors import CheckpointFormatError
from .io import load_state
from .irse import build_loaded, safe_torch_load

__all__ = ["NETS", "SHIFT", "SCALE", "LPIPS", "Backbone", "load_lpips", "load_backbone", "load_heads"]

# torchvision ``features`` layouts: ints = 3x3 conv (padding 1) + ReLU, 'M' = 2x2 max-pool; AlexNet spelled out.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
NETS = {
    # net: (channels of the five taps, index in ``features`` of the ReLU each tap is read after,
    #       smallest input side that reaches every tap, backbone registry name, heads registry name)
    "vgg": dict(channels=(64, 128, 256, 512, 512), taps=(3, 8, 15, 22, 29), min_side=16,
                backbone="vgg16-imagenet", heads="lpips-vgg"),
    "alex": dict(channels=(64, 192, 384, 256, 256), taps=(1, 4, 7, 9, 11), min_side=31,
                 backbone="alexnet-imagenet", heads="lpips-alex"),
}
SHIFT = (-0.030, -0.088, -0.188)   # v0.1 input scaling (per RGB channel), for inputs in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


def _features(net: str) -> nn.Sequential:
    """torchvision's ``features`` Sequential (same indices, so the same state-dict keys), ReLUs not in place."""
    layers: list[nn.Module] = []
    if net == "vgg":
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
    elif net == "alex":
        layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                  nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                  nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2)]
    else:
        raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """The ImageNet feature extractor; ``forward(x[N,3,H,W] scaled) -> five taps [N,C_l,h_l,w_l]``.
    State-dict keys ``features.{i}.{weight,bias}`` as in torchvision's files."""

    def __init__(self, net: str = "vgg"):   # 'vgg' (VGG-16) or 'alex' (AlexNet)
        super().__init__()
        self.net = net
        self.features = _features(net)
        self.taps = NETS[net]["taps"]
        self._last = self.taps[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == self._last:   # nothing after the last tap is used
                break
        return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector over its L2 norm (+EPS). The clamp only keeps the gradient finite at an
    all-zero vector (where the value is 0 either way)."""
    return x / (x.pow(2).sum(1, keepdim=True).clamp_min(1e-20).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance: ``forward(x0[N,3,H,W], x1[N,3,H,W] in [-1,1]) -> [N]``. Frozen (requires_grad off);
    gradients flow to the inputs. H, W >= 16 (VGG) / 31 (AlexNet), so that every tap has a position."""

    def __init__(self, net: str = "vgg"):   # 'vgg' (the paper's refinement) or 'alex'
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        self.net = net
        self.backbone = Backbone(net)
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in NETS[net]["channels"]])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        assert x0.shape == x1.shape and x0.ndim == 4 and x0.shape[1] == 3, (tuple(x0.shape), tuple(x1.shape))
        assert min(x0.shape[-2:]) >= NETS[self.net]["min_side"], f"LPIPS-{self.net} needs sides >= " \
            f"{NETS[self.net]['min_side']}, got {tuple(x0.shape)}"
        n = x0.shape[0]
        f = self.backbone((torch.cat([x0, x1]) - self.shift) / self.scale)   # one pass for both images
        total = x0.new_zeros(n)
        for fl, w in zip(f, self.lins):
            d = (_unit(fl[:n]) - _unit(fl[n:])).pow(2)
            total = total + F.conv2d(d, w).mean((1, 2, 3))
        return total


def load_backbone(path: str | os.PathLike,        # torchvision ImageNet file (or a state dict with features.*)
                  net: str = "vgg",
                  device: str | torch.device = "cpu") -> Backbone:
    """The ``features.*`` of a torchvision VGG-16 / AlexNet state dict (``classifier.*`` ignored); a clear
    CheckpointFormatError naming the file when it is another network."""
    what = f"LPIPS {net} backbone ({NETS[net]['backbone']})"
    ckpt = safe_torch_load(path, what)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping):
        raise CheckpointFormatError(f"{what}: {path} holds a {type(ckpt).__name__}, expected torchvision's state "
                                    "dict with features.* keys")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    return build_loaded(lambda: Backbone(net), sd, path, what, device)


def load_heads(path: str | os.PathLike, net: str = "vgg") -> list[torch.Tensor]:
    """The five linear heads [1,C_l,1,1] from our safetensors file (registry ``lpips-vgg`` / ``lpips-alex``)."""
    state, cfg = load_state(path)
    if cfg.get("arch") != "lpips-heads" or cfg.get("net") != net or cfg.get("version") != "0.1":
        raise CheckpointFormatError(f"{path}: not the LPIPS v0.1 '{net}' heads file (config {cfg!r}); use the "
                                    f"registry's {NETS[net]['heads']}")
    chans = NETS[net]["channels"]
    heads = []
    for i, c in enumerate(chans):
        w = state.get(f"lin{i}.weight")
        if w is None or tuple(w.shape) != (1, c, 1, 1):
            raise CheckpointFormatError(f"{path}: lin{i}.weight must be [1,{c},1,1], got "
                                        f"{None if w is None else tuple(w.shape)}")
        heads.append(w)
    return heads


def load_lpips(net: str = "vgg",
               backbone: str | os.PathLike | None = None,   # explicit backbone file; None = registry lookup
               heads: str | os.PathLike | None = None,      # explicit heads file; None = the shipped one
               device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS v0.1 with the ImageNet backbone and the shipped heads. A missing backbone raises
    MissingWeightsError saying where it was looked for and how to get it."""
    if net not in NETS:
        raise CheckpointFormatError(f"LPIPS net must be one of {', '.join(NETS)}, got {net!r}")
    spec = NETS[net]
    bb = load_backbone(registry.locate(spec["backbone"], explicit=backbone), net, device)
    ws = load_heads(registry.locate(spec["heads"], explicit=heads), net)
    m = LPIPS(net).to(device)
    m.backbone = bb
    with torch.no_grad():
        for p, w in zip(m.lins, ws):
            p.copy_(w)
    return m.eval().requires_grad_(False)
