"""CLIP's ViT image tower in plain PyTorch (the structure FaRL checkpoints load into) and its loader.

Written from the golden spec (``shared/fixtures/README.md`` section 13). State-dict keys are CLIP's names for the
image tower, without the ``visual.`` prefix:

- ``conv1.weight`` [W,3,p,p] (patch embedding, no bias), ``class_embedding`` [W], ``positional_embedding`` [1+P,W],
  ``ln_pre.*``
- ``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight [3W,W], attn.in_proj_bias [3W], attn.out_proj, ln_2,
  mlp.c_fc [4W,W], mlp.c_proj [W,4W]}`` (pre-norm blocks, QuickGELU)
- ``ln_post.*``, ``proj`` [W,E]

Tokens run batch-first ([N,1+P,W]); CLIP itself runs sequence-first, which changes nothing numerically.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointFormatError
from .irse import _fmt, build_loaded, safe_torch_load

__all__ = ["QuickGELU", "SelfAttention", "ResidualAttentionBlock", "Transformer", "VisionTransformer",
           "visual_state_dict", "infer_config", "load_clip_visual", "FARL_MIM_PREFIXES"]

# FaRL's .pth also keeps its masked-image-modelling branch under visual.* (pre-training only; CLIP's
# load_state_dict(strict=False) skips it). Dropped by name; any other unknown visual key is an error.
FARL_MIM_PREFIXES = ("mask_token", "lm_transformer.", "lm_head.", "ln_lm.")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (not nn.GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (packed q/k/v projection)."""

    def __init__(self,
                 width: int,   # model width W
                 heads: int):  # attention heads (W divisible by heads)
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,L,W] -> [N,L,W]
        n, length, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)          # [N,heads,L,W/heads], no mask (image tokens)
        return self.out_proj(y.transpose(1, 2).reshape(n, length, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self,
                 width: int,   # model width W
                 heads: int):  # attention heads
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,L,W] -> [N,L,W]
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks (keys ``resblocks.{i}.*``)."""

    def __init__(self,
                 width: int,   # model width W
                 layers: int,  # number of blocks
                 heads: int):  # attention heads per block
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,L,W] -> [N,L,W]
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """CLIP's image tower. ``tokens(x)`` -> [N,1+P,W] after the last block (before ln_post);
    ``encode_image(x)`` = ``forward(x)`` -> [N,E] = ln_post(CLS token) @ proj. Input: [N,3,R,R] at
    ``input_resolution``, already preprocessed (this module normalises nothing)."""

    def __init__(self,
                 input_resolution: int = 224,   # R: square input side (a multiple of patch_size)
                 patch_size: int = 16,          # p: patch side; P = (R/p)^2 patch tokens
                 width: int = 768,              # W: token width
                 layers: int = 12,              # transformer blocks
                 heads: int | None = None,      # attention heads (None: W // 64, CLIP's rule)
                 output_dim: int = 512):        # E: width of the projected image embedding
        super().__init__()
        heads = width // 64 if heads is None else heads
        if min(input_resolution, patch_size, width, layers, heads, output_dim) < 1:
            raise ValueError(f"non-positive size (resolution {input_resolution}, patch {patch_size}, width "
                             f"{width}, layers {layers}, heads {heads}, output_dim {output_dim})")
        if input_resolution % patch_size:
            raise ValueError(f"input resolution {input_resolution} is not a multiple of patch size {patch_size}")
        self.input_resolution, self.patch_size = input_resolution, patch_size
        self.width, self.layers, self.heads, self.output_dim = width, layers, heads, output_dim
        self.grid = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2 + 1

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,R,R] -> [N,1+P,W] (last block, before ln_post)
        r = self.input_resolution
        assert x.ndim == 4 and tuple(x.shape[1:]) == (3, r, r), f"expected [N,3,{r},{r}], got {tuple(x.shape)}"
        x = self.conv1(x)                                                 # [N,W,g,g]
        x = x.flatten(2).transpose(1, 2)                                  # [N,P,W], row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N,1,W]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        assert x.shape[1:] == (self.num_tokens, self.width), tuple(x.shape)
        return x

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:  # [N,3,R,R] -> [N,E]
        return self.ln_post(self.tokens(x)[:, 0]) @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


# --- checkpoint loading -----------------------------------------------------------------------------------------

def visual_state_dict(ckpt: object, path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The image tower's entries of a CLIP / FaRL checkpoint, ``visual.`` stripped.

    Accepts ``{'state_dict': {...}}`` (FaRL) or a plain CLIP state dict; text-tower keys are ignored and FaRL's
    masked-image-modelling branch (``FARL_MIM_PREFIXES``) is dropped."""
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping):
        raise CheckpointFormatError(f"{what}: {path} holds a {type(ckpt).__name__}, expected a CLIP state dict "
                                    "(or a dict with 'state_dict', as FaRL saves) with visual.* keys")
    keys = [k for k in ckpt if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):   # saved from DataParallel
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    sd = {k[len("visual."):]: v for k, v in ckpt.items() if isinstance(k, str) and k.startswith("visual.")}
    if not sd:
        raise CheckpointFormatError(
            f"{what}: {path} has no visual.* entries (CLIP's image tower); its keys are "
            f"{_fmt([str(k) for k in ckpt]) or 'none'}. Expected a FaRL .pth or a CLIP ViT state dict.")
    return {k: v for k, v in sd.items() if not k.startswith(FARL_MIM_PREFIXES)}


def infer_config(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str) -> dict:
    """VisionTransformer keyword arguments read from the shapes of an image-tower state dict."""
    need = ("conv1.weight", "positional_embedding", "proj")
    missing = [f"visual.{k}" for k in need if k not in sd]
    if missing:
        raise CheckpointFormatError(f"{what}: {path} lacks {', '.join(missing)}, needed to read the architecture "
                                    "(file truncated, or not a CLIP ViT image tower)")
    bad = [f"visual.{k}" for k in need if not isinstance(sd[k], torch.Tensor)]
    if bad:
        raise CheckpointFormatError(f"{what}: {path}: entries are not tensors: {', '.join(bad)}")
    conv, pos, proj = sd["conv1.weight"], sd["positional_embedding"], sd["proj"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3] or pos.ndim != 2 or proj.ndim != 2:
        raise CheckpointFormatError(
            f"{what}: {path}: unexpected shapes visual.conv1.weight {tuple(conv.shape)} (expected [W,3,p,p]), "
            f"visual.positional_embedding {tuple(pos.shape)} ([1+P,W]), visual.proj {tuple(proj.shape)} ([W,E])")
    width, patch = int(conv.shape[0]), int(conv.shape[2])
    grid = math.isqrt(max(int(pos.shape[0]) - 1, 0))
    if grid < 1 or grid * grid + 1 != pos.shape[0]:
        raise CheckpointFormatError(f"{what}: {path}: visual.positional_embedding has {pos.shape[0]} rows, not "
                                    "1 + a square number of patches")
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.") and
              k.split(".")[2].isdigit()}
    if not blocks:
        raise CheckpointFormatError(f"{what}: {path} has no visual.transformer.resblocks.* entries")
    return dict(input_resolution=grid * patch, patch_size=patch, width=width, layers=max(blocks) + 1,
                heads=width // 64 if width >= 64 else 1, output_dim=int(proj.shape[1]))


def load_clip_visual(path: str | os.PathLike,          # FaRL .pth ({'state_dict': CLIP keys}) or a CLIP state dict
                     device: str | torch.device = "cpu",
                     freeze: bool = True,                # requires_grad False (gradients still reach inputs)
                     what: str = "CLIP ViT image tower") -> VisionTransformer:
    """CLIP ViT image tower (eval mode, float32) from a FaRL / CLIP checkpoint; the architecture (width, layers,
    patch, resolution, embedding width) is read from the shapes, heads = width // 64 as in CLIP. Every
    image-tower tensor must be present with the right shape (strict), else CheckpointFormatError naming the file."""
    sd = visual_state_dict(safe_torch_load(path, what), path, what)
    cfg = infer_config(sd, path, what)

    def holder() -> nn.Module:   # checked under CLIP's own key names, so messages say visual.*
        h = nn.Module()
        h.visual = VisionTransformer(**cfg)
        return h

    model = build_loaded(holder, {f"visual.{k}": v for k, v in sd.items()}, path, what, device).visual.float()
    if freeze:
        model.requires_grad_(False)
    return model
