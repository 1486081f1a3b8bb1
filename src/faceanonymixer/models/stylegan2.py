"""StyleGAN2 generator and discriminator in plain PyTorch (clean-room, from the fixtures spec).

Parameter and buffer names are rosinality's (``style.N``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.N``,
``to_rgbs.N``, ``noises.noise_N``), so a rosinality ``g_ema`` state dict or e4e's ``decoder.*`` loads with
``strict=True``. NVlabs checkpoints go through ``stylegan2_convert``. The numerics follow the standard StyleGAN2
conventions pinned down by the golden fixtures (README sections 4 and 6):

* mapping: PixelNorm, then n_mlp equalised-lr FCs (lr_mul 0.01) with leaky-ReLU(0.2) * sqrt(2);
* modulated 3x3 conv with demodulation (eps 1e-8); noise added before the bias; leaky-ReLU(0.2) * sqrt(2);
* up-sampling conv = transposed stride-2 conv, then the [1,3,3,1] FIR (gain 4, pad 1/1);
* ToRGB = 1x1 modulated conv without demodulation plus bias; the RGB skip is up-sampled with the same FIR
  (gain 4, pad 2/1) and summed over resolutions.

No custom ops: the modulated conv is one grouped conv over the batch (``fused_modconv=True``) or one shared conv
on style-scaled activations followed by the demodulation scale (``fused_modconv=False``); both agree to ~1e-5.
The default ``None`` picks the grouped conv only for CUDA inference (NVlabs' choice): on CPU the grouped conv
measured 1.2-3x slower (torch 2.13, 1 thread, 64 px: fwd+bwd batch 16 at 256..64 channels 2.5 s vs 0.8 s;
inference batch 8 at 512 channels 4.1 s vs 2.6 s). Both paths work under bf16 autocast and channels_last.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("const", "random", "none")


# ----------------------------------------------------------------------------------------------------------
# Helpers

def channels_for(resolution: int, channel_multiplier: float = 2, channel_base: int | None = None,
                 channel_max: int = 512, channels: dict | None = None) -> dict[int, int]:
    """Feature maps per resolution 4..resolution.

    Precedence: explicit ``channels`` ({res: ch}, keys may be strings after JSON), then NVlabs style
    ``min(channel_base // res, channel_max)``, then rosinality style (512 up to 32 px, then
    ``min(512, 16384 * channel_multiplier // res)``, i.e. 256*cm at 64, 128*cm at 128, ...)."""
    res_list = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
    if channels is not None:
        ch = {int(k): int(v) for k, v in channels.items()}
        missing = [r for r in res_list if r not in ch]
        if missing:
            raise ValueError(f"channels must give a width for every resolution {res_list}; missing {missing}")
        return {r: ch[r] for r in res_list}
    if channel_base is not None:
        return {r: int(min(channel_base // r, channel_max)) for r in res_list}
    return {r: int(min(512, 16384 * channel_multiplier // r)) for r in res_list}


def make_kernel(k) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel [kh, kw] (sums to 1)."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def _depthwise(kernel: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    # true convolution = correlation with the flipped kernel; [1,3,3,1] is symmetric but keep it exact
    return kernel.flip([0, 1]).to(dtype)[None, None].expand(channels, 1, *kernel.shape)


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Per-channel 2-D FIR with padding (pad0 before, pad1 after) on both axes; x [N,C,H,W]."""
    c = x.shape[1]
    if pad[0] == pad[1]:
        return F.conv2d(x, _depthwise(kernel, c, x.dtype), padding=pad[0], groups=c)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, _depthwise(kernel, c, x.dtype), groups=c)


def fir_upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Zero-insertion 2x up-sampling followed by the FIR with pad (2, 1), as one depthwise transposed conv.

    ``kernel`` [4,4] already carries the gain of 4 (rosinality ``upsample.kernel``); x [N,C,H,W] -> [N,C,2H,2W]."""
    assert kernel.shape == (4, 4), "fir_upsample2x is written for 4-tap filters"
    c = x.shape[1]
    # transposed conv weight is used un-flipped: out[j] = sum_i x[i] k[j + 1 - 2i] == pad(2,1)+flipped corr.
    w = kernel.to(x.dtype)[None, None].expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, w, stride=2, padding=1, groups=c)


# ----------------------------------------------------------------------------------------------------------
# Layers (rosinality names)

class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, D]
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Equalised-lr linear: runtime weight gain lr_mul/sqrt(in), bias gain lr_mul; optional fused lrelu*sqrt2."""

    def __init__(self, in_dim: int,              # input features
                 out_dim: int,                   # output features
                 bias: bool = True,              # learnable bias
                 bias_init: float = 0.0,         # initial (effective) bias value
                 lr_mul: float = 1.0,            # learning-rate multiplier (0.01 in the mapping network)
                 activation: str | None = None,  # None | 'fused_lrelu'
                 ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # stored as N(0,1)/lr_mul
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul)) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            if self.bias is not None:
                out = out + self.bias * self.lr_mul
            return F.leaky_relu(out, 0.2) * SQRT2
        b = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, b)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, lr_mul={self.lr_mul}, activation={self.activation}"


class ModulatedConv2d(nn.Module):
    """Style-modulated conv; weight (1, out, in, k, k) with runtime gain 1/sqrt(in*k*k)."""

    def __init__(self, in_channel: int,          # input feature maps
                 out_channel: int,               # output feature maps
                 kernel_size: int,               # 3 for StyledConv, 1 for ToRGB
                 style_dim: int,                 # w dimensionality
                 demodulate: bool = True,        # weight demodulation (False for ToRGB)
                 upsample: bool = False,         # transposed stride-2 conv + FIR blur
                 blur_kernel=(1, 3, 3, 1),       # FIR taps for the blur after the transposed conv
                 fused_modconv: bool | None = None,  # grouped conv (True), shared conv on scaled activations
                                                     # (False), None = auto (grouped only for CUDA inference)
                 ):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate, self.fused_modconv = upsample, demodulate, fused_modconv
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def _apply(self, fn, recurse=True):
        # Module.to(memory_format=channels_last) also converts 5-D tensors and fails on them; our weight is
        # (1, out, in, k, k) for key compatibility, so convert its 4-D slice and put the leading 1 back.
        def fn5(t):
            if t.dim() == 5:
                try:
                    return fn(t)
                except RuntimeError as e:
                    if "channels_last" not in str(e):
                        raise
                    return fn(t[0]).unsqueeze(0)
            return fn(t)
        return super()._apply(fn5, recurse)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x [N, in, H, W], w [N, style_dim] -> [N, out, H', W'] (H' = 2H when upsample)
        n, c, h, wd = x.shape
        assert c == self.in_channel, f"expected {self.in_channel} input channels, got {c}"
        s = self.modulation(w)                                      # [N, in]
        fused = self.fused_modconv
        if fused is None:  # auto: grouped conv only for CUDA inference (1.2-3x slower on CPU, see module doc)
            fused = x.device.type == "cuda" and not (self.training and torch.is_grad_enabled())
        if fused:
            return self._forward_fused(x, s)
        return self._forward_shared(x, s)

    def _forward_fused(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        o, k = self.out_channel, self.kernel_size
        weight = self.scale * self.weight * s.reshape(n, 1, c, 1, 1)  # [N, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8).reshape(n, o, 1, 1, 1)
        x = x.reshape(1, n * c, h, wd)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c, o, k, k)   # conv_transpose weight [in, out/g, k, k]
            out = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, padding=0, groups=n)
            out = out.reshape(n, o, *out.shape[2:])
            return self.blur(out)
        out = F.conv2d(x, weight.reshape(n * o, c, k, k).to(x.dtype), padding=self.padding, groups=n)
        return out.reshape(n, o, h, wd)

    def _forward_shared(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        weight = self.scale * self.weight[0]                        # [out, in, k, k]
        x = x * s.reshape(n, c, 1, 1).to(x.dtype)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (W s_i)^2 = (s^2) @ sum_{kh,kw} W^2  -> [N, out]
            s32 = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s  # demod stats in >= fp32
            with torch.autocast(device_type=out.device.type, enabled=False):
                d = torch.rsqrt(s32.square() @ weight.to(s32.dtype).square().sum([2, 3]).t() + 1e-8)
            out = out * d.reshape(n, -1, 1, 1).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, k={self.kernel_size}, upsample={self.upsample}, "
                f"demodulate={self.demodulate}, fused={self.fused_modconv}")


class Blur(nn.Module):
    """FIR blur with buffer ``kernel`` (normalised taps x upsample_factor**2)."""

    def __init__(self, kernel, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,C,H,W] -> [N,C,H+p0+p1-kh+1, ...]
        return fir_filter(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip; buffer ``kernel`` = normalised taps x 4."""

    def __init__(self, kernel, factor: int = 2):
        super().__init__()
        assert factor == 2
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,C,H,W] -> [N,C,2H,2W]
        return fir_upsample2x(x, self.kernel)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # per-layer noise strength

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        # x [N,C,H,W], noise [N or 1, 1, H, W] or None (no noise)
        if noise is None:
            return x
        return x + self.weight * noise.to(x.dtype)


class FusedLeakyReLU(nn.Module):
    """bias add, leaky-ReLU(0.2) * sqrt(2), optional clamp (NVlabs conv_clamp)."""

    def __init__(self, channels: int, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1).to(x.dtype), 0.2) * SQRT2
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        return x


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, n: int) -> torch.Tensor:  # -> [n, C, 4, 4]
        return self.input.expand(n, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel=(1, 3, 3, 1), conv_clamp: float | None = None,
                 fused_modconv: bool | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                                    upsample=upsample, blur_kernel=blur_kernel, fused_modconv=fused_modconv)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel, clamp=conv_clamp)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel=(1, 3, 3, 1),
                 conv_clamp: float | None = None, fused_modconv: bool | None = None, img_channels: int = 3):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, img_channels, 1, style_dim, demodulate=False,
                                    fused_modconv=fused_modconv)
        self.bias = nn.Parameter(torch.zeros(1, img_channels, 1, 1))
        self.clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w)
        out = out + self.bias.to(out.dtype)
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        if skip is not None:
            out = out + self.upsample(skip).to(out.dtype)
        return out


class _Noises(nn.Module):
    """Holds the fixed per-layer noise buffers ``noise_{i}`` (1,1,R,R) used by noise_mode='const'."""


# ----------------------------------------------------------------------------------------------------------
# Generator

class Generator(nn.Module):
    """StyleGAN2 generator (config-f layout), rosinality key names.

    ws index -> layer: 0 conv1@4, 1 to_rgb1; for block k (res 2^(k+3)): 1+2k convs[2k] (up), 2+2k convs[2k+1],
    3+2k to_rgbs[k]. Noise input 0 feeds conv1, 2k+1 / 2k+2 feed convs[2k] / convs[2k+1].
    """

    def __init__(self,
                 resolution: int = 64,                 # output side, power of two >= 4
                 z_dim: int = 512,                     # input latent (Z) size
                 w_dim: int = 512,                     # intermediate latent (W) size (= rosinality style_dim)
                 n_mlp: int = 8,                       # mapping layers
                 channel_multiplier: float = 2,        # rosinality channel rule (used when channel_base/channels unset)
                 channel_base: int | None = None,      # NVlabs channel rule: min(channel_base // res, channel_max)
                 channel_max: int = 512,               # NVlabs cap on feature maps
                 channels: dict | None = None,         # explicit {res: feature maps}; overrides both rules
                 lr_mlp: float = 0.01,                 # mapping learning-rate multiplier
                 blur_kernel=(1, 3, 3, 1),             # FIR taps for up-sampling
                 conv_clamp: float | None = None,      # NVlabs clamp of conv/ToRGB outputs (None = off)
                 fused_modconv: bool | None = None,    # modulated conv as one grouped conv (True), as a shared
                                                       # conv on scaled activations (False), None = auto
                 ):
        super().__init__()
        log_res = int(math.log2(resolution))
        if resolution < 4 or 2 ** log_res != resolution:
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        self.config = dict(resolution=resolution, z_dim=z_dim, w_dim=w_dim, n_mlp=n_mlp,
                           channel_multiplier=channel_multiplier, channel_base=channel_base,
                           channel_max=channel_max,
                           channels=None if channels is None else {str(k): int(v) for k, v in channels.items()},
                           lr_mlp=lr_mlp, blur_kernel=list(blur_kernel), conv_clamp=conv_clamp,
                           fused_modconv=fused_modconv)
        self.resolution, self.z_dim, self.w_dim, self.n_mlp = resolution, z_dim, w_dim, n_mlp
        self.identity_layers: list[int] | None = None     # mixing band measured for these weights (meta), if any
        self.key_psi: float | None = None                  # key-code truncation measured for these weights (meta)
        self.verify_thresholds: dict | None = None         # {matcher: cosine} calibrated for these weights (meta)
        self.log_size = log_res
        self.num_ws = 2 * log_res - 2                      # = rosinality n_latent
        self.num_noise = 2 * log_res - 3                   # = rosinality num_layers
        self.channels = channels_for(resolution, channel_multiplier, channel_base, channel_max, channels)
        ch = self.channels

        layers = [PixelNorm()]
        for i in range(n_mlp):
            layers.append(EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)                # keys style.1 .. style.n_mlp

        kw = dict(blur_kernel=blur_kernel, conv_clamp=conv_clamp, fused_modconv=fused_modconv)
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, w_dim, **kw)
        self.to_rgb1 = ToRGB(ch[4], w_dim, upsample=False, **kw)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = _Noises()
        self.noise_shapes = []                             # (R, R) per noise input
        for i in range(self.num_noise):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
            self.noise_shapes.append((r, r))
        in_ch = ch[4]
        for lr in range(3, log_res + 1):
            out_ch = ch[2 ** lr]
            self.convs.append(StyledConv(in_ch, out_ch, 3, w_dim, upsample=True, **kw))
            self.convs.append(StyledConv(out_ch, out_ch, 3, w_dim, **kw))
            self.to_rgbs.append(ToRGB(out_ch, w_dim, **kw))
            in_ch = out_ch
        # mean W (truncation centre); not part of rosinality g_ema, so it is optional on load (see below)
        self.register_buffer("latent_avg", torch.zeros(w_dim), persistent=False)

    # latent_avg: saved in our state dicts, optional when loading (rosinality g_ema / e4e decoder lack it)
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "latent_avg"] = self.latent_avg if keep_vars else self.latent_avg.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "latent_avg"
        if key in state_dict:
            v = state_dict.pop(key)
            if tuple(v.shape) != tuple(self.latent_avg.shape):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(v.shape)}, "
                                  f"the shape in current model is {tuple(self.latent_avg.shape)}.")
            else:
                with torch.no_grad():
                    self.latent_avg.copy_(v)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def set_fused_modconv(self, fused: bool | None) -> "Generator":
        """Switch every modulated conv between grouped (True), shared (False) and auto (None)."""
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.fused_modconv = fused
        self.config["fused_modconv"] = fused
        return self

    # -- public API ------------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, z_dim] -> w [N, w_dim]."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N,{self.z_dim}], got {tuple(z.shape)}"
        return self.style(z)

    def truncate(self, w: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        """latent_avg + psi * (w - latent_avg); w [N,w_dim] or ws [N,num_ws,w_dim]; with ``cutoff`` only ws
        layers < cutoff are truncated (a [N,w_dim] input is then broadcast to ws)."""
        assert w.shape[-1] == self.w_dim and w.ndim in (2, 3), f"bad w shape {tuple(w.shape)}"
        if cutoff is not None and w.ndim == 2:
            w = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi == 1:
            return w
        avg = self.latent_avg.to(w.dtype)
        wt = avg + psi * (w - avg)
        if cutoff is None:
            return wt
        assert w.shape[1] == self.num_ws, f"ws must be [N,{self.num_ws},{self.w_dim}]"
        layer = torch.arange(self.num_ws, device=w.device).reshape(1, -1, 1)
        return torch.where(layer < cutoff, wt, w)

    def make_noise(self, n: int, device=None, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh N(0,1) noise list, one [n,1,R,R] tensor per noise input."""
        device = device if device is not None else self.latent_avg.device
        return [torch.randn(n, 1, r, r, device=device, generator=generator) for r, _ in self.noise_shapes]

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const",
                  noise: list | tuple | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> img [N, 3, R, R] (raw, not clamped).

        noise_mode: 'const' (the noises.noise_i buffers), 'random' (fresh N(0,1) per sample), 'none' (zero).
        noise: optional list of num_noise tensors [N or 1, 1, R_i, R_i]; None entries fall back to noise_mode."""
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), \
            f"ws must be [N,{self.num_ws},{self.w_dim}], got {tuple(ws.shape)}"
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        n = ws.shape[0]
        if noise is not None:
            assert len(noise) == self.num_noise, f"noise list must have {self.num_noise} entries, got {len(noise)}"
        noises = []
        for i, (r, _) in enumerate(self.noise_shapes):
            nz = noise[i] if noise is not None else None
            if nz is None:
                if noise_mode == "const":
                    nz = getattr(self.noises, f"noise_{i}")
                elif noise_mode == "random":
                    nz = torch.randn(n, 1, r, r, device=ws.device, dtype=ws.dtype)
            else:
                assert nz.ndim == 4 and nz.shape[1:] == (1, r, r) and nz.shape[0] in (1, n), \
                    f"noise[{i}] must be [N or 1,1,{r},{r}], got {tuple(nz.shape)}"
            noises.append(nz)

        x = self.input(n)
        x = self.conv1(x, ws[:, 0], noises[0])
        skip = self.to_rgb1(x, ws[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, ws[:, i], noises[2 * k + 1])
            x = self.convs[2 * k + 1](x, ws[:, i + 1], noises[2 * k + 2])
            skip = to_rgb(x, ws[:, i + 2], skip)
            i += 2
        assert skip.shape[1:] == (3, self.resolution, self.resolution)
        return skip

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const", noise: list | None = None) -> torch.Tensor:
        """z [N, z_dim] -> img [N, 3, R, R]."""
        w = self.mapping(z)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        ws = self.truncate(ws, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, noise=noise)

    @torch.no_grad()
    def compute_latent_avg(self, n: int = 10000, seed: int = 0, batch: int = 1000) -> torch.Tensor:
        """Mean of mapping(z) over n seeded z; stores it in ``latent_avg`` and returns it."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g)
        dev = self.latent_avg.device
        w = torch.cat([self.mapping(z[i:i + batch].to(dev)).float() for i in range(0, n, batch)])
        self.latent_avg.copy_(w.mean(0))
        return self.latent_avg


# ----------------------------------------------------------------------------------------------------------
# Discriminator (rosinality layout, resnet architecture)

class EqualConv2d(nn.Module):
    """Equalised-lr conv: weight (out, in, k, k) with runtime gain 1/sqrt(in*k*k)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.conv2d(x, (self.weight * self.scale).to(x.dtype), b, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU]; down-sampling = blur then stride-2 conv."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel=(1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N,in,H,W] -> [N,out,H/2,W/2]
        return (self.conv2(self.conv1(x)) + self.skip(x)) * (1 / SQRT2)


class Discriminator(nn.Module):
    """StyleGAN2 resnet discriminator with minibatch-stddev; img [N, 3, R, R] -> logits [N, 1]."""

    def __init__(self,
                 resolution: int = 64,                 # input side, power of two >= 4
                 channel_multiplier: float = 2,        # rosinality channel rule
                 channel_base: int | None = None,      # NVlabs channel rule (overrides channel_multiplier)
                 channel_max: int = 512,               # NVlabs cap
                 channels: dict | None = None,         # explicit {res: feature maps}
                 blur_kernel=(1, 3, 3, 1),             # FIR taps for down-sampling
                 stddev_group: int = 4,                # minibatch-stddev group size (clipped to a divisor of N)
                 stddev_feat: int = 1,                 # minibatch-stddev feature channels
                 img_channels: int = 3,                # input image channels
                 ):
        super().__init__()
        log_res = int(math.log2(resolution))
        if resolution < 4 or 2 ** log_res != resolution:
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        self.config = dict(resolution=resolution, channel_multiplier=channel_multiplier, channel_base=channel_base,
                           channel_max=channel_max,
                           channels=None if channels is None else {str(k): int(v) for k, v in channels.items()},
                           blur_kernel=list(blur_kernel), stddev_group=stddev_group, stddev_feat=stddev_feat,
                           img_channels=img_channels)
        self.resolution, self.img_channels = resolution, img_channels
        ch = self.channels = channels_for(resolution, channel_multiplier, channel_base, channel_max, channels)
        convs = [ConvLayer(img_channels, ch[resolution], 1)]
        in_ch = ch[resolution]
        for lr in range(log_res, 2, -1):
            out_ch = ch[2 ** (lr - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = stddev_group, stddev_feat
        self.final_conv = ConvLayer(in_ch + stddev_feat, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
                                          EqualLinear(ch[4], 1))

    def _stddev(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(n, self.stddev_group) + 1) if n % d == 0)
        f = self.stddev_feat
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # variance in >= fp32
        y = y.reshape(g, -1, f, c // f, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)           # [N/g, f, c/f, h, w]
        y = y.mean([2, 3, 4]).reshape(-1, f, 1, 1)                 # [N/g, f, 1, 1]
        y = y.repeat(g, 1, h, w).to(x.dtype)                       # [N, f, h, w]
        return torch.cat([x, y], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert img.ndim == 4 and img.shape[1:] == (self.img_channels, self.resolution, self.resolution), \
            f"img must be [N,{self.img_channels},{self.resolution},{self.resolution}], got {tuple(img.shape)}"
        x = self.convs(img)
        x = self.final_conv(self._stddev(x))
        return self.final_linear(x.reshape(x.shape[0], -1))       # [N, 1]
