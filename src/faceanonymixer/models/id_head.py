"""Identity head of our embedded encoder: a face recogniser's embedding of the input -> W+ offsets.

A from-scratch e4e body on 64-px faces learns pose, light and hair long before identity (its reconstructions of
held-out people scored SFace cos 0.26, two different people ~0.1). pSp/e4e get identity from an ArcFace-pretrained
body; we have no such body for 64 px, so the encoder is given a recogniser's embedding of the input instead, and a
small MLP maps it to per-layer offsets that are added to the body's codes. The head's last layer starts at zero, so
a new head leaves the encoder's output unchanged until it is trained (``faceanonymixer train encoder`` with
``train: id_head``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["IdentityHead"]


class IdentityHead(nn.Module):
    def __init__(self, layers: Sequence[int],   # W+ layers that receive an offset (e.g. 0..9)
                 emb_dim: int = 128,            # recogniser embedding size (SFace: 128)
                 hidden: int = 512,             # MLP width
                 w_dim: int = 512,              # style size
                 id_net: str = "sface"):        # recogniser (registry name) whose embedding is the input
        super().__init__()
        self.layers = [int(i) for i in layers]
        assert len(self.layers) > 0 and len(set(self.layers)) == len(self.layers), self.layers
        self.emb_dim, self.hidden, self.w_dim, self.id_net = int(emb_dim), int(hidden), int(w_dim), str(id_net)
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, len(self.layers) * w_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def config(self) -> dict:
        return dict(layers=self.layers, emb_dim=self.emb_dim, hidden=self.hidden, w_dim=self.w_dim, id_net=self.id_net)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:  # [N,emb_dim] (unit norm) -> [N,len(layers),w_dim]
        assert emb.ndim == 2 and emb.shape[1] == self.emb_dim, f"expected [N,{self.emb_dim}], got {tuple(emb.shape)}"
        return self.mlp(emb).view(emb.shape[0], len(self.layers), self.w_dim)

    def add_to(self, codes: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # codes [N,L,w_dim] -> same, offsets added
        assert codes.ndim == 3 and codes.shape[2] == self.w_dim and max(self.layers) < codes.shape[1], tuple(codes.shape)
        out = codes.clone()
        out[:, self.layers] = out[:, self.layers] + self.forward(emb).to(codes.dtype)
        return out
