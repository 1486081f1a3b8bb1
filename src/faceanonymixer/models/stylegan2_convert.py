"""NVlabs (stylegan2-ada-pytorch / stylegan3 ``networks_stylegan2``) <-> rosinality StyleGAN2 key conversion.

The transforms are those of the fixtures README section 7 and hold at any resolution: reshapes only (no spatial
flip of the up-sampling conv weights), FIR filters x4 where rosinality up-samples, ``mapping.w_avg`` <->
``latent_avg``. ``keymap(resolution, n_mlp)`` is the single source of truth for both directions.

Also: Generator constructor kwargs from NVlabs ``init_kwargs`` and from the shapes of a rosinality state dict.
"""
from __future__ import annotations

import math
import re

import torch

from .stylegan2 import make_kernel

# transform codes used in keymap rows
COPY, UNSQUEEZE0, TO_SCALAR1, TO_RGB_BIAS, NOISE_4D, KERNEL_X4, DROP, LATENT_AVG = (
    "copy", "unsqueeze(0)", "reshape([1])", "reshape([1,3,1,1])", "reshape([1,1,R,R])", "multiply by 4",
    "drop", "latent_avg")

_LAYER_PARAMS = [  # NVlabs SynthesisLayer entry (state-dict order) -> (rosinality suffix, transform)
    ("weight", "conv.weight", UNSQUEEZE0),
    ("noise_strength", "noise.weight", TO_SCALAR1),
    ("bias", "activate.bias", COPY),
    ("resample_filter", None, None),     # conv0: blur kernel x4; conv1: dropped
    ("noise_const", None, NOISE_4D),     # -> noises.noise_i
    ("affine.weight", "conv.modulation.weight", COPY),
    ("affine.bias", "conv.modulation.bias", COPY),
]
_TORGB_PARAMS = [
    ("weight", "conv.weight", UNSQUEEZE0),
    ("bias", "bias", TO_RGB_BIAS),
    ("affine.weight", "conv.modulation.weight", COPY),
    ("affine.bias", "conv.modulation.bias", COPY),
]


def keymap(resolution: int, n_mlp: int = 8) -> list[tuple[str, str | None, str]]:
    """Rows (nvlabs_key, rosinality_key or None, transform) in NVlabs state-dict order.

    ``rosinality_key`` 'latent_avg' is the top-level entry next to g_ema (not inside it)."""
    log_res = int(math.log2(resolution))
    assert 2 ** log_res == resolution and resolution >= 4, f"resolution must be a power of two, got {resolution}"
    rows = []

    def layer(nv: str, ros: str, noise_idx: int, up: bool):
        for p, rp, t in _LAYER_PARAMS:
            if p == "resample_filter":
                rows.append((f"{nv}.{p}", f"{ros}.conv.blur.kernel", KERNEL_X4) if up else (f"{nv}.{p}", None, DROP))
            elif p == "noise_const":
                rows.append((f"{nv}.{p}", f"noises.noise_{noise_idx}", t))
            else:
                rows.append((f"{nv}.{p}", f"{ros}.{rp}", t))

    def torgb(nv: str, ros: str):
        for p, rp, t in _TORGB_PARAMS:
            rows.append((f"{nv}.{p}", f"{ros}.{rp}", t))

    rows.append(("synthesis.b4.const", "input.input", UNSQUEEZE0))
    rows.append(("synthesis.b4.resample_filter", None, DROP))
    layer("synthesis.b4.conv1", "conv1", 0, up=False)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k, lr in enumerate(range(3, log_res + 1)):
        b = f"synthesis.b{2 ** lr}"
        rows.append((f"{b}.resample_filter", f"to_rgbs.{k}.upsample.kernel", KERNEL_X4))
        layer(f"{b}.conv0", f"convs.{2 * k}", 2 * k + 1, up=True)
        layer(f"{b}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, up=False)
        torgb(f"{b}.torgb", f"to_rgbs.{k}")
    rows.append(("mapping.w_avg", "latent_avg", LATENT_AVG))
    for i in range(n_mlp):
        rows.append((f"mapping.fc{i}.weight", f"style.{i + 1}.weight", COPY))
        rows.append((f"mapping.fc{i}.bias", f"style.{i + 1}.bias", COPY))
    return rows


def _nvlabs_geometry(sd: dict) -> tuple[int, int]:
    """(resolution, mapping layers) from NVlabs key names."""
    res = [int(m.group(1)) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))]
    fcs = [int(m.group(1)) for k in sd if (m := re.match(r"mapping\.fc(\d+)\.weight$", k))]
    if not res or not fcs:
        raise KeyError("not an NVlabs StyleGAN2 generator state dict (expected mapping.fc*/synthesis.b* keys)")
    return max(res), max(fcs) + 1


def _rosinality_geometry(sd: dict) -> tuple[int, int]:
    """(resolution, mapping layers) from rosinality key names."""
    rgbs = [int(m.group(1)) for k in sd if (m := re.match(r"to_rgbs\.(\d+)\.", k))]
    styles = [int(m.group(1)) for k in sd if (m := re.match(r"style\.(\d+)\.weight$", k))]
    if "input.input" not in sd or not styles:
        raise KeyError("not a rosinality StyleGAN2 generator state dict (expected style.*/input.input keys)")
    return 2 ** ((max(rgbs) + 3) if rgbs else 2), max(styles)


def _fwd(v: torch.Tensor, t: str) -> torch.Tensor:
    v = v.detach().clone()  # fixture/pool tensors share storage: never hand out views
    if t in (COPY, LATENT_AVG):
        return v
    if t == UNSQUEEZE0:
        return v.unsqueeze(0)
    if t == TO_SCALAR1:
        return v.reshape(1)
    if t == TO_RGB_BIAS:
        return v.reshape(1, -1, 1, 1)
    if t == NOISE_4D:
        return v.reshape(1, 1, *v.shape[-2:])
    if t == KERNEL_X4:
        return v * 4
    raise ValueError(t)


def _inv(v: torch.Tensor, t: str) -> torch.Tensor:
    v = v.detach().clone()
    if t in (COPY, LATENT_AVG):
        return v
    if t == UNSQUEEZE0:
        return v.squeeze(0)
    if t == TO_SCALAR1:
        return v.reshape(())
    if t == TO_RGB_BIAS:
        return v.reshape(-1)
    if t == NOISE_4D:
        return v.reshape(v.shape[-2:])
    if t == KERNEL_X4:
        return v / 4
    raise ValueError(t)


def nvlabs_to_rosinality(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """NVlabs G state dict -> (rosinality g_ema state dict, latent_avg or None). Raises KeyError on any key that
    the table does not know (conditional generators, other architectures)."""
    res, n_mlp = _nvlabs_geometry(sd)
    rows = keymap(res, n_mlp)
    known = {nv for nv, _, _ in rows}
    extra = [k for k in sd if k not in known]
    if extra:
        raise KeyError(f"unsupported NVlabs keys (only unconditional 'skip' StyleGAN2 generators convert): {extra[:5]}")
    out, latent_avg = {}, None
    for nv, ros, t in rows:
        if nv not in sd:
            if t == DROP or t == LATENT_AVG:
                continue
            raise KeyError(f"NVlabs state dict lacks {nv}")
        if t == DROP:
            continue
        if t == LATENT_AVG:
            latent_avg = _fwd(sd[nv], t)
            continue
        out[ros] = _fwd(sd[nv], t)
    return out, latent_avg


def rosinality_to_nvlabs(sd: dict[str, torch.Tensor], latent_avg: torch.Tensor | None = None,
                         resample_filter=(1, 3, 3, 1)) -> dict[str, torch.Tensor]:
    """rosinality g_ema state dict (+ latent_avg) -> NVlabs G state dict in NVlabs key order.

    The FIR buffers without a rosinality counterpart get the canonical filter; w_avg is zero when latent_avg is
    None. A ``latent_avg`` entry inside ``sd`` (our own state dicts) is used when the argument is None."""
    sd = dict(sd)
    if latent_avg is None and "latent_avg" in sd:
        latent_avg = sd["latent_avg"]
    sd.pop("latent_avg", None)
    res, n_mlp = _rosinality_geometry(sd)
    rows = keymap(res, n_mlp)
    known = {ros for _, ros, _ in rows if ros}
    extra = [k for k in sd if k not in known]
    if extra:
        raise KeyError(f"unknown rosinality keys: {extra[:5]}")
    fir = make_kernel(resample_filter)
    out = {}
    for nv, ros, t in rows:
        if t == DROP:
            out[nv] = fir.clone()
        elif t == LATENT_AVG:
            w_dim = sd["style.1.weight"].shape[0]
            out[nv] = latent_avg.detach().clone().reshape(-1) if latent_avg is not None else torch.zeros(w_dim)
        else:
            if ros not in sd:
                raise KeyError(f"rosinality state dict lacks {ros}")
            out[nv] = _inv(sd[ros], t)
    return out


# ----------------------------------------------------------------------------------------------------------
# Constructor kwargs

def generator_kwargs_from_nvlabs(init_kwargs: dict) -> dict:
    """Generator kwargs from an NVlabs ``G.init_kwargs`` (nested EasyDicts already plain dicts).

    Raises ValueError for what our Generator cannot represent (conditional, non-RGB, non-'skip', no noise)."""
    ik = dict(init_kwargs)
    mk = dict(ik.get("mapping_kwargs") or {})
    sk = dict(ik.get("synthesis_kwargs") or {})
    # stylegan2-ada also accepts synthesis kwargs at top level via **synthesis_kwargs
    for k in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
              "use_noise"):
        if k in ik and k not in sk:
            sk[k] = ik[k]
    if int(ik.get("c_dim", 0) or 0) != 0:
        raise ValueError(f"conditional generators (c_dim={ik['c_dim']}) are not supported")
    if int(ik.get("img_channels", 3)) != 3:
        raise ValueError(f"only RGB generators are supported (img_channels={ik.get('img_channels')})")
    arch = sk.get("architecture", "skip")
    if arch != "skip":
        raise ValueError(f"only the 'skip' synthesis architecture is supported (got {arch!r})")
    if not sk.get("use_noise", True):
        raise ValueError("generators built with use_noise=False are not supported")
    w_dim = int(ik.get("w_dim", 512))
    lf = mk.get("layer_features")
    if lf is not None and int(lf) != w_dim:
        raise ValueError(f"mapping layer_features={lf} != w_dim={w_dim} is not supported")
    if mk.get("embed_features"):
        raise ValueError("mapping embed_features (conditional) is not supported")
    rf = sk.get("resample_filter", [1, 3, 3, 1])
    return dict(resolution=int(ik["img_resolution"]), z_dim=int(ik.get("z_dim", 512)), w_dim=w_dim,
                n_mlp=int(mk.get("num_layers", 8)), channel_base=int(sk.get("channel_base", 32768)),
                channel_max=int(sk.get("channel_max", 512)), lr_mlp=float(mk.get("lr_multiplier", 0.01)),
                blur_kernel=[int(x) if float(x).is_integer() else float(x) for x in rf],
                conv_clamp=None if sk.get("conv_clamp") is None else float(sk["conv_clamp"]))


def generator_kwargs_from_rosinality(sd: dict[str, torch.Tensor], lr_mlp: float = 0.01) -> dict:
    """Generator kwargs read off the shapes of a rosinality g_ema state dict (explicit ``channels``).

    lr_mlp cannot be seen in the weights; 0.01 is what every released checkpoint uses."""
    res, n_mlp = _rosinality_geometry(sd)
    w_dim, z_dim = sd["style.1.weight"].shape
    ch = {4: int(sd["input.input"].shape[1])}
    for k in range(int(math.log2(res)) - 2):
        ch[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    return dict(resolution=res, z_dim=int(z_dim), w_dim=int(w_dim), n_mlp=n_mlp, channels=ch, lr_mlp=lr_mlp)
