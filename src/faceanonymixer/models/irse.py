"""IR / IR-SE residual backbone: ArcFace IR-SE50 (``model_ir_se50.pth``) and the body of e4e.

Clean-room implementation from the golden spec (``shared/fixtures/README.md`` sections 8-9). State-dict keys
are exactly those of the pSp/e4e/TreB1eN checkpoints, with no prefix:

- ``input_layer.{0: Conv3x3 (no bias), 1: BN2d, 2: PReLU}``
- ``body.{i}.res_layer.{0: BN, 1: Conv3x3, 2: PReLU, 3: Conv3x3 (strided), 4: BN[, 5: SE(fc1, fc2)]}``
- ``body.{i}.shortcut_layer.{0: Conv1x1 (strided), 1: BN}`` only where the channel count changes; elsewhere a
  parameter-free ``MaxPool2d(1, stride)`` (identity or subsampling)
- ``output_layer.{0: BN2d, 1: Dropout, 2: Flatten, 3: Linear, 4: BN1d}`` (Backbone only)

The body is configurable (units and channels per stage) so that smaller encoders reuse the same code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointFormatError, MissingWeightsError

__all__ = [
    "IRSE50_UNITS", "IRSE50_CHANNELS", "units_for", "SEModule", "BottleneckIR", "make_input_layer", "make_body",
    "stage_ends", "Backbone", "ArcFaceIRSE50", "psp_crop_pool", "resize_to", "load_irse50", "safe_torch_load",
    "check_state_dict", "build_loaded", "l2_normalize", "PSP_CROP_ROWS", "PSP_CROP_COLS",
]

IRSE50_UNITS = (3, 4, 14, 3)          # units per stage of IR(-SE)50
IRSE50_CHANNELS = (64, 128, 256, 512)  # output channels per stage
_UNITS_BY_DEPTH = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}

# pSp/e4e identity-loss convention on a 256x256 FFHQ-aligned image (half-open bounds).
PSP_CROP_ROWS = (35, 223)
PSP_CROP_COLS = (32, 220)


def units_for(num_layers: int) -> tuple[int, ...]:
    """Units per stage of the standard IR(-SE) depths 50 / 100 / 152."""
    if num_layers not in _UNITS_BY_DEPTH:
        raise ValueError(f"num_layers must be one of {sorted(_UNITS_BY_DEPTH)}, got {num_layers}")
    return _UNITS_BY_DEPTH[num_layers]


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid, times the input."""

    def __init__(self, channels: int,   # feature channels
                 reduction: int = 16):  # bottleneck ratio of the gate
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,C,H,W] -> [N,C,H,W]
        g = F.adaptive_avg_pool2d(x, 1)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g


class BottleneckIR(nn.Module):
    """IR unit (``bottleneck_IR`` / ``bottleneck_IR_SE``): BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE]
    plus the shortcut."""

    def __init__(self, in_channels: int,     # input channels
                 depth: int,                 # output channels
                 stride: int,                # spatial stride (applied by the second conv and the shortcut)
                 se: bool = True,            # True: IR-SE unit, False: plain IR unit
                 se_reduction: int = 16):    # SE bottleneck ratio
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # identity or subsampling; no parameters
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channels),
                  nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
                  nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
                  nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,Cin,H,W] -> [N,depth,H/stride,W/stride]
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(out_channels: int = 64,   # stem width (64 for IR-SE50)
                     in_channels: int = 3) -> nn.Sequential:
    """``input_layer``: Conv3x3 (no bias) -> BN -> PReLU, stride 1."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.PReLU(out_channels))


def make_body(units: Sequence[int] = IRSE50_UNITS,        # units per stage
              channels: Sequence[int] = IRSE50_CHANNELS,  # output channels per stage
              stem_channels: int | None = None,           # channels entering the body (default channels[0])
              mode: str = "ir_se",                        # 'ir_se' or 'ir'
              se_reduction: int = 16) -> nn.Sequential:
    """``body``: one flat Sequential of units; the first unit of every stage has stride 2."""
    if len(units) != len(channels) or not units or min(units) < 1:
        raise ValueError(f"units {tuple(units)} and channels {tuple(channels)} must be non-empty, same length, units >= 1")
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
    cin = channels[0] if stem_channels is None else stem_channels
    mods = []
    for n, depth in zip(units, channels):
        for j in range(n):
            mods.append(BottleneckIR(cin, depth, 2 if j == 0 else 1, se=(mode == "ir_se"), se_reduction=se_reduction))
            cin = depth
    return nn.Sequential(*mods)


def stage_ends(units: Sequence[int]) -> list[int]:
    """Body index of the last unit of every stage: [2, 6, 20, 23] for IR-SE50 (e4e taps c1, c2, c3 = the last 3)."""
    out, s = [], 0
    for n in units:
        s += n
        out.append(s - 1)
    return out


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 along dim 1 with no epsilon, as the reference (a zero vector gives NaN, never silently 0)."""
    return x / torch.norm(x, 2, 1, True)


class Backbone(nn.Module):
    """ArcFace IR(-SE) backbone; defaults give IR-SE50 with a 512-d L2-normalised embedding.

    Input [N,3,S,S] with S = ``input_size`` (RGB in [-1, 1] for the pSp/TreB1eN weights); output [N,embedding_dim].
    """

    def __init__(self, input_size: int = 112,                   # input side; must be divisible by 2**len(units)
                 units: Sequence[int] = IRSE50_UNITS,           # units per stage
                 channels: Sequence[int] = IRSE50_CHANNELS,     # channels per stage
                 mode: str = "ir_se",                           # 'ir_se' or 'ir'
                 drop_ratio: float = 0.6,                       # dropout before the linear layer (train mode only)
                 affine: bool = True,                           # final BatchNorm1d has weight/bias
                 embedding_dim: int = 512,                      # output dimension
                 stem_channels: int | None = None,              # input_layer width (default channels[0])
                 se_reduction: int = 16):
        super().__init__()
        stem = channels[0] if stem_channels is None else stem_channels
        down = 2 ** len(units)
        if input_size % down:
            raise ValueError(f"input_size {input_size} must be divisible by {down} (one stride 2 per stage)")
        self.input_size = input_size
        self.out_spatial = input_size // down
        self.embedding_dim = embedding_dim
        c = channels[-1]
        # Registration order input_layer, output_layer, body = the key order of model_ir_se50.pth.
        self.input_layer = make_input_layer(stem)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(c), nn.Dropout(drop_ratio), nn.Flatten(),  # NCHW flatten: index = c*S*S + h*S + w
            nn.Linear(c * self.out_spatial ** 2, embedding_dim), nn.BatchNorm1d(embedding_dim, affine=affine))
        self.body = make_body(units, channels, stem, mode, se_reduction)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,S,S] -> body output [N,C,S/16,S/16]
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2:] == (self.input_size, self.input_size), \
            f"Backbone expects [N,3,{self.input_size},{self.input_size}], got {tuple(x.shape)}"
        return self.body(self.input_layer(x))

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:  # [N,3,S,S] -> [N,embedding_dim]
        y = self.output_layer(self.features(x))
        return l2_normalize(y) if normalize else y


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize of [N,C,H,W]: area averaging when shrinking (as pSp's AdaptiveAvgPool2d face_pool),
    bilinear when enlarging; identity when already ``size``."""
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-2] >= size and x.shape[-1] >= size:
        return F.adaptive_avg_pool2d(x, (size, size))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def psp_crop_pool(x: torch.Tensor) -> torch.Tensor:
    """pSp/e4e ArcFace crop of a 256 FFHQ-aligned image: rows 35:223, cols 32:220 (188x188), then
    AdaptiveAvgPool2d(112). [N,3,256,256] -> [N,3,112,112]."""
    assert x.ndim == 4 and x.shape[-2:] == (256, 256), f"psp_crop_pool expects [N,C,256,256], got {tuple(x.shape)}"
    x = x[:, :, PSP_CROP_ROWS[0]:PSP_CROP_ROWS[1], PSP_CROP_COLS[0]:PSP_CROP_COLS[1]]
    return F.adaptive_avg_pool2d(x, (112, 112))


class ArcFaceIRSE50(nn.Module):
    """IR-SE50 embedding of faces in [-1, 1] -> [N,512] L2-normalised.

    ``psp_crop=False``: input is an ArcFace-aligned face (resized to 112 if needed).
    ``psp_crop=True``: input is an FFHQ-aligned face at any size; it is brought to 256 (area / bilinear), then
    cropped [35:223, 32:220] and pooled to 112, the pSp/e4e identity-loss convention.
    """

    def __init__(self, backbone: Backbone | None = None,  # a 112-input Backbone (default: fresh IR-SE50)
                 psp_crop: bool = False):                 # use the pSp/e4e 256 crop convention
        super().__init__()
        self.backbone = backbone if backbone is not None else Backbone()
        assert self.backbone.input_size == 112, "ArcFaceIRSE50 wraps a 112-input Backbone"
        self.psp_crop = psp_crop
        self.dim = self.backbone.embedding_dim

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,H,W] in [-1,1] -> [N,3,112,112]
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N,3,H,W], got {tuple(x.shape)}"
        if self.psp_crop:
            return psp_crop_pool(resize_to(x, 256))
        return resize_to(x, 112)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,H,W] in [-1,1] -> [N,512]
        return self.backbone(self.preprocess(x))


# --- checkpoint loading -----------------------------------------------------------------------------------------

def safe_torch_load(path: str | os.PathLike, what: str) -> object:
    """``torch.load(weights_only=True)`` on CPU with user-facing errors naming the file.

    Missing file -> MissingWeightsError; truncated / not a checkpoint / refused by the weights-only unpickler ->
    CheckpointFormatError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what}: file {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused globals, truncation, absurd nesting: a message, never a traceback
        from .loading import weights_only_error
        raise CheckpointFormatError(f"{what}: {weights_only_error(p, e)}") from None


def _fmt(items: Sequence[str], n: int = 6) -> str:
    items = list(items)
    s = ", ".join(items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_state_dict(model: nn.Module, sd: Mapping[str, object], path: str | os.PathLike, what: str) -> None:
    """Raise CheckpointFormatError (naming file and expectation) unless ``sd`` has exactly ``model``'s keys
    and shapes. Shapes are compared without touching data, so ``model`` may live on the meta device."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad_type = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad_type:
        raise CheckpointFormatError(f"{what}: {path}: entries are not tensors: {_fmt(bad_type)}")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
              if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes: {_fmt(shapes, 4)}")
        raise CheckpointFormatError(
            f"{what}: {path} does not match the expected architecture ({len(expected)} tensors). "
            + "; ".join(parts) + ". Check that the file is the right model.")


def build_loaded(factory, sd: Mapping[str, torch.Tensor], path, what: str, device="cpu") -> nn.Module:
    """Build ``factory()`` on the meta device (no random init, no double memory), check ``sd`` against it,
    materialise on ``device`` and copy ``sd`` in (load_state_dict copies, so aliased / non-contiguous source
    tensors are safe). Returns the module in eval mode."""
    try:
        with torch.device("meta"):
            model = factory()
    except ValueError as e:  # a configuration read from the file that cannot be built
        raise CheckpointFormatError(f"{what}: {path} describes an unsupported architecture: {e}") from e
    check_state_dict(model, sd, path, what)
    model = model.to_empty(device=device)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_irse50(path: str | os.PathLike,     # model_ir_se50.pth (plain state dict) or {'state_dict': ...}
                device: str | torch.device = "cpu",
                freeze: bool = True) -> Backbone:  # freeze: requires_grad False (gradients still reach inputs)
    """ArcFace IR-SE50 ``Backbone`` (112 input, eval mode) from ``model_ir_se50.pth``."""
    what = "ArcFace IR-SE50 (model_ir_se50.pth)"
    ckpt = safe_torch_load(path, what)
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping):
        raise CheckpointFormatError(f"{what}: {path} holds a {type(ckpt).__name__}, expected a state dict "
                                    "with keys input_layer.*, body.*, output_layer.*")
    sd = dict(ckpt)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model = build_loaded(lambda: Backbone(112), sd, path, what, device)
    if freeze:
        model.requires_grad_(False)
    return model
