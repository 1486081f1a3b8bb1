"""Recogniser terms of the generator trainer (the loss apart from the training loop, as in NVlabs stylegan3's
training/loss.py): identity diversity and the identity band, measured with SFace on generator samples.

* Diversity: few-identity collapse limits the method (docs/models.md), so the embeddings of samples with unrelated
  z are pushed apart, hinged at a margin so that real-like spreads (different people: SFace ~0.1) cost nothing.
* Band: the method swaps only the mixing band for the key's, so identity must live there: the cosine of a sample
  and its copy with the band taken from an unrelated z is pushed below a margin; the optional pose term keeps the
  swap's coarse layout (8x8 standardised grey image), so that pose stays with the layers outside the band.

The trainer calls the terms lazily (every ``id_diversity_every`` steps) and scales the loss up to match."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fr import get_recogniser
from ..mixing import layer_bands
from ..models.stylegan2 import Generator

ID_NET = "sface"   # the recogniser of both terms (the shipped run's; other recognisers only measure the result)
NOISE_MODES = ("random", "const", "none")


class IdentityLoss:
    """``loss, stats = IdentityLoss(G, ...)(rng)``: the weighted sum of the terms that are on, and their values."""

    def __init__(self,
                 G: Generator,                    # the generator being trained (not its EMA): gradients flow into it
                 device: torch.device,            # where G lives; the recogniser is loaded there on first use
                 images: int = 8,                 # samples per evaluation (all pairs of them in the diversity term)
                 diversity: float = 0.0,          # weight of the diversity term (0 = off)
                 diversity_margin: float = 0.2,   # unrelated pairs below this cosine cost nothing
                 band: float = 0.0,               # weight of the band term (0 = off)
                 band_layers: list[int] | None = None,  # W+ layers swapped by the band term; None = mixing.layer_bands
                 band_margin: float = 0.1,        # band-swapped pairs below this cosine cost nothing
                 band_psi: float = 1.0,           # truncation of both codes of the band term (1 = none)
                 band_pose: float = 0.0,          # weight of the layout (pose proxy) term on the band swap
                 noise: str = "random"):          # noise maps of the samples: 'const' makes w alone carry identity
        if noise not in NOISE_MODES:
            raise ValueError(f"id_noise must be one of {NOISE_MODES}, got {noise!r}")
        if band > 0:
            if band_layers is None:
                band_layers = layer_bands(G.num_ws, G.resolution)[1]
            band_layers = sorted(int(i) for i in band_layers)
            assert band_layers and 0 <= band_layers[0] and band_layers[-1] < G.num_ws, band_layers
        self.G, self.device, self.n = G, device, int(images)
        self.diversity, self.diversity_margin = float(diversity), float(diversity_margin)
        self.band, self.band_layers, self.band_margin = float(band), band_layers, float(band_margin)
        self.band_psi, self.band_pose, self.noise = float(band_psi), float(band_pose), noise
        self.avg_z = torch.randn(512, G.z_dim, generator=torch.Generator().manual_seed(1))  # fixed w_avg estimate
        self._id_net = None   # loaded on first call, so that building the trainer draws nothing from torch's RNG

    @property
    def id_net(self):
        if self._id_net is None:
            self._id_net = get_recogniser(ID_NET, device=str(self.device)).requires_grad_(False)
        return self._id_net

    def _embed(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ws [n,L,D] -> images x [n,3,R,R], unit embeddings e [n,E]."""
        x = self.G.synthesis(ws, noise_mode=self.noise).float()
        e = self.id_net.embed_ffhq(x.contiguous())
        assert e.shape[0] == ws.shape[0], e.shape
        return x, e

    def __call__(self, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Draw ``images`` z from ``rng`` (the trainer's stream) -> (loss, stats)."""
        G, n = self.G, self.n
        z = torch.randn(n, G.z_dim, generator=rng).to(self.device)
        w = G.mapping(z)
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        stats, loss = {}, w.new_zeros(())
        x = e = None
        if self.diversity > 0:
            x, e = self._embed(ws)
            cos = e @ e.t()
            off = cos[~torch.eye(n, dtype=torch.bool, device=cos.device)]
            div = F.relu(off - self.diversity_margin).mean()
            loss = loss + div * self.diversity
            stats.update(id_cos=float(off.detach().mean()), loss_div=float(div.detach()))
        if self.band > 0:
            w_t = w
            if self.band_psi != 1.0:
                with torch.no_grad():                                        # fixed z: no draw from rng
                    w_avg = G.mapping(self.avg_z.to(self.device)).mean(0)
                w_t = w_avg + self.band_psi * (w - w_avg)
                ws = w_t.unsqueeze(1).repeat(1, G.num_ws, 1)
            if x is None or self.band_psi != 1.0:
                x, e = self._embed(ws)
            ws_b = ws.clone()
            band = self.band_layers
            ws_b[:, band] = w_t.roll(1, dims=0).unsqueeze(1).expand(-1, len(band), -1)  # band of an unrelated z
            x_b, e_b = self._embed(ws_b)
            cos_b = (e * e_b).sum(-1)                                        # [n]
            bl = F.relu(cos_b - self.band_margin).mean()
            loss = loss + bl * self.band
            stats.update(band_cos=float(cos_b.detach().mean()), loss_band=float(bl.detach()))
            if self.band_pose > 0:
                pose = F.mse_loss(layout(x_b), layout(x))
                loss = loss + pose * self.band_pose
                stats.update(band_pose=float(pose.detach()))
        return loss, stats


def layout(x: torch.Tensor) -> torch.Tensor:
    """Coarse layout of images x[N,3,R,R]: grey, 8x8 area average, standardised per image -> [N,64]; colour and
    brightness drop out, face position and head pose stay."""
    g = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), 8).flatten(1)
    return (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)
