"""Make the LPIPS golden data (tests/data/lpips/README.md). Two steps, two environments:

    # 1. in the project's venv: convert the lpips package's v0.1 linear heads to our safetensors (shipped)
    PYTHONPATH=src .venv/bin/python tests/data/lpips/make_lpips_data.py heads /tmp/lpips_dl/x/lpips/weights/v0.1
    # 2. in a throwaway venv with torch 2.14.1, torchvision 0.29.1 and lpips 0.1.4 (never the project's):
    /tmp/venv_lpips/bin/python tests/data/lpips/make_lpips_data.py reference tests/data/lpips/reference.pt

The backbone weights and the inputs are NOT stored: ``backbone_state`` and ``inputs`` below draw them from
seeded NumPy generators (PCG64, float64 normals cast to float32) with only exactly-rounded arithmetic after the
draw (products, sums, repeat, clip). Not torch.randn: its CPU kernel is vectorised differently per instruction set
(AVX-512, AVX2, plain x86-64 give other numbers from one seed), and not tanh or interpolation (their vectorised
kernels round differently). Their sha256 is stored with the reference outputs, so a change shows up as a clear
failure, not as a wrong value.
This file imports only torch and NumPy (and, per step, safetensors or lpips/torchvision), never the project:
the test imports ``backbone_state`` and ``inputs`` from it, so both sides use the very same code.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

SEED = {"vgg": 7001, "alex": 7002}
INPUT_SEED = 7100
# (out, in, kernel) of every conv in torchvision's ``features``, with its index there.
CONVS = {
    "vgg": [(0, 64, 3, 3), (2, 64, 64, 3), (5, 128, 64, 3), (7, 128, 128, 3), (10, 256, 128, 3), (12, 256, 256, 3),
            (14, 256, 256, 3), (17, 512, 256, 3), (19, 512, 512, 3), (21, 512, 512, 3), (24, 512, 512, 3),
            (26, 512, 512, 3), (28, 512, 512, 3)],
    "alex": [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3), (10, 256, 256, 3)],
}


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)                       # float64; the same numbers on every CPU


def backbone_state(net: str) -> dict[str, torch.Tensor]:
    """Random ``features.*`` weights in torchvision's layout: He-normal weights, small biases, drawn in index
    order from ``np.random.default_rng(SEED[net])``."""
    rng = np.random.default_rng(SEED[net])
    sd = {}
    for i, cout, cin, k in CONVS[net]:
        w = _normal(rng, cout, cin, k, k) * math.sqrt(2.0 / (cin * k * k))
        sd[f"features.{i}.weight"] = torch.from_numpy(w.astype(np.float32))
        sd[f"features.{i}.bias"] = torch.from_numpy((_normal(rng, cout) * 0.05).astype(np.float32))
    return sd


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 64x64 pairs in [-1,1]: blocky smooth images (8x8 noise repeated 8x, plus fine noise, clipped) and
    (0) a slightly noisier copy, (1) a strongly changed copy, (2) an unrelated image."""
    rng = np.random.default_rng(INPUT_SEED)
    base = _normal(rng, 4, 3, 8, 8).repeat(8, axis=2).repeat(8, axis=3)
    base = np.clip(0.6 * base + 0.3 * _normal(rng, 4, 3, 64, 64), -1.0, 1.0)
    noise = _normal(rng, 2, 3, 64, 64)
    x0 = base[:3].copy()
    x1 = np.stack([np.clip(base[0] + 0.05 * noise[0], -1, 1), np.clip(base[1] + 0.5 * noise[1], -1, 1), base[3]])
    return torch.from_numpy(x0.astype(np.float32)), torch.from_numpy(x1.astype(np.float32))


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_heads(src: Path) -> None:
    """lpips v0.1 {vgg,alex}.pth (keys lin{i}.model.1.weight) -> src/faceanonymixer/weights/lpips_{net}_v0.1.*"""
    from faceanonymixer.models.io import save_model   # step 1 runs in the project's venv
    root = Path(__file__).resolve().parents[3]
    licence_text = next(src.parents[2].glob("lpips-*.dist-info/LICENSE")).read_text()   # BSD-2: ship it along
    for net in ("vgg", "alex"):
        f = src / f"{net}.pth"
        sd = torch.load(f, map_location="cpu", weights_only=True)
        state = {f"lin{i}.weight": sd[f"lin{i}.model.1.weight"].float().clone() for i in range(5)}
        assert set(sd) == {f"lin{i}.model.1.weight" for i in range(5)}, sorted(sd)
        meta = dict(source=f"lpips 0.1.4 (PyPI wheel), file lpips/weights/v0.1/{net}.pth",
                    source_sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                    licence="BSD-2-Clause, Copyright (c) 2018, Richard Zhang, Phillip Isola, Alexei A. Efros, "
                            "Eli Shechtman, Oliver Wang (the lpips package's LICENSE)",
                    licence_text=licence_text,
                    conversion="keys lin{i}.model.1.weight -> lin{i}.weight; values unchanged (float32)")
        out = save_model(state, root / "src/faceanonymixer/weights" / f"lpips_{net}_v0.1.safetensors",
                         config=dict(arch="lpips-heads", net=net, version="0.1"), meta=meta)
        print(out, hashlib.sha256(out.read_bytes()).hexdigest())


def make_reference(out: Path) -> None:
    """Reference LPIPS values and input gradients with the lpips package (trunk replaced by our random
    weights, heads = the package's v0.1 files)."""
    import lpips
    import torchvision
    torch.set_num_threads(1)
    x0, x1 = inputs()
    versions = dict(torch=str(torch.__version__), torchvision=str(torchvision.__version__),
                    lpips=importlib.metadata.version("lpips"))
    res = dict(x_sha256=digest([x0, x1]), versions=versions)
    for net in ("vgg", "alex"):
        sd = backbone_state(net)
        tv = (torchvision.models.vgg16 if net == "vgg" else torchvision.models.alexnet)(weights=None)
        tv.features.load_state_dict({k[len("features."):]: v for k, v in sd.items()}, strict=True)
        m = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)   # heads from the package, trunk random ...
        for name, sl in m.net.named_children():                   # ... then replaced by ours, layer by layer
            for idx, layer in sl.named_children():
                layer.load_state_dict(tv.features[int(idx)].state_dict())
        m.eval()
        a = x0.clone().requires_grad_(True)
        d = m(a, x1).flatten()
        d.sum().backward()
        res[net] = dict(d=d.detach().clone(), grad_x0=a.grad.detach().clone(), weights_sha256=digest(sd.values()))
        print(net, d.tolist())
    torch.save(res, out)
    (out.with_suffix(".json")).write_text(json.dumps(
        {k: (v if k in ("x_sha256", "versions") else {"d": v["d"].tolist(), "weights_sha256": v["weights_sha256"]})
         for k, v in res.items()}, indent=1) + "\n")


if __name__ == "__main__":
    step, arg = sys.argv[1], Path(sys.argv[2])
    make_heads(arg) if step == "heads" else make_reference(arg)
