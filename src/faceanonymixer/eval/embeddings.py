"""Batched, gradient-free embedding of image sets with a recogniser (``fr.get_recogniser``), for the evaluation
reports: FFHQ-aligned tensors via ``embed_ffhq`` and ArcFace-aligned uint8 crops via ``embed``. Results on the CPU."""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def embed_ffhq(rec, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """x[N,3,R,R] in [-1,1], FFHQ-aligned -> [N,dim] L2-normalised float32 on the CPU."""
    out = [rec.embed_ffhq(x[i:i + batch].to(rec.device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, rec.dim)


@torch.no_grad()
def embed_crops(rec, crops: np.ndarray, batch: int = 64) -> torch.Tensor:
    """[M,112,112,3] uint8 ArcFace crops -> [M,dim] L2-normalised float32 on the CPU."""
    out = []
    for i in range(0, len(crops), batch):
        t = torch.from_numpy(np.ascontiguousarray(crops[i:i + batch])).permute(0, 3, 1, 2).float().div(255.0)
        out.append(rec.embed(t.to(rec.device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, rec.dim)
