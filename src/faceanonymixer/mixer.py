"""The feed-forward mixer (experimental, docs/mixer.md): one pass ``M(ws_real, e, key) -> protected W+`` instead
of the 50-step per-image optimisation.

Only the identity band (``MixPlan.optimised_layers``) is written; the other layers stay the photo's own code
(layers the plan takes from the key, 'code' assignment, take the key's code as in ``mixing.mix``). The band is

    z   = z_key + alpha * sqrt(z_dim) * R_key @ normalize(f(e))       # person term, key-rotated, in z space
    w   = G.truncate(G.mapping(z), psi)                               # through the generator's own mapping net
    ws[:, band] = w + carry[l] * (ws_real[:, l] - latent_avg)         # optional learnt carry of the photo's band

* ``z_key`` is exactly the key's z (``keys.Key.z``), so ``alpha = 0`` gives the key's code, i.e. the naive mix.
* ``R_key`` is a random orthogonal matrix derived from the key (HMAC label ``faceanonymixer/mixer-rotation/v1``):
  the same face gives an unrelated person term under every key (cross-key unlinkability), while two people under
  one key keep the distance ``f`` puts between them (the stolen-key case).
* ``f`` (a semi-orthogonal linear map plus an MLP, on the recogniser embedding ``e``) is the only learnt map of
  identity; it is key-independent.
  Routing the term through the mapping network keeps the band where the generator makes faces (a free W-space
  offset head, the first design, learnt to leave the face manifold).
* The mapping net starts with PixelNorm, so only the direction of ``z`` matters: ``alpha`` sets the balance
  between key and person (alpha = 1: equal norms).

Weights: safetensors + JSON (``export_mixer`` / ``load_mixer``, arch ``fam-mixer``). ``protect_batch`` protects
aligned faces with a loaded ``pipeline.Protector`` (its generator, inverter, plan and key code)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointFormatError, FaceAnonyMixerError
from .keys import DEFAULT_CONTEXT, Key, key_psi

ARCH = "fam-mixer"
ROTATION_LABEL = "faceanonymixer/mixer-rotation/v1|"


# -- key material ------------------------------------------------------------------------------------------
@dataclass
class KeyCodes:
    """What the mixer needs from a key, one row per image (rows may repeat one key)."""
    w: torch.Tensor                 # [N,L,D] the key's W+ code (keys.key_wplus)
    z: torch.Tensor                 # [N,Z] the key's z (keys.Key.z), the same draw key_wplus maps
    rot: torch.Tensor               # [N,Z,Z] the key's orthogonal rotation of the person term

    def __post_init__(self):
        n = self.w.shape[0]
        assert self.w.dim() == 3 and self.z.dim() == 2 and self.rot.dim() == 3, \
            (tuple(self.w.shape), tuple(self.z.shape), tuple(self.rot.shape))
        assert self.z.shape[0] == n and self.rot.shape == (n, self.z.shape[1], self.z.shape[1]), \
            (tuple(self.w.shape), tuple(self.z.shape), tuple(self.rot.shape))

    def __len__(self) -> int:
        return self.w.shape[0]

    def index(self, idx) -> "KeyCodes":
        """Rows ``idx`` (a list / LongTensor): e.g. expand K keys to the images of a batch."""
        return KeyCodes(self.w[idx], self.z[idx], self.rot[idx])

    def to(self, device) -> "KeyCodes":
        return KeyCodes(self.w.to(device), self.z.to(device), self.rot.to(device))

    @staticmethod
    def cat(codes: Sequence["KeyCodes"]) -> "KeyCodes":
        return KeyCodes(torch.cat([c.w for c in codes]), torch.cat([c.z for c in codes]),
                        torch.cat([c.rot for c in codes]))


def key_rotation(key: Key, dim: int, context: str = DEFAULT_CONTEXT) -> torch.Tensor:
    """The key's random orthogonal matrix [dim,dim] (Haar: QR of a Gaussian matrix with the sign fix), drawn on
    the CPU in float64 from a seed bound to the key and the context; never stored."""
    d = key.derive(ROTATION_LABEL + context)
    seed = int.from_bytes(d[:8], "big") & ((1 << 63) - 1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(int(dim), int(dim), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)[None, :]   # sign fix: Haar, not QR-biased
    return q.float()


@torch.no_grad()
def key_codes(key: Key, generator, context: str = DEFAULT_CONTEXT, psi: float | None = None) -> KeyCodes:
    """KeyCodes [1,...] for one key on the generator's device (``psi`` as in keys.key_wplus)."""
    from .keys import key_wplus
    dev = generator.latent_avg.device
    w = key_wplus(key, generator, context, psi)
    z = key.z(generator.z_dim, context).to(dev)
    rot = key_rotation(key, generator.z_dim, context).to(dev)[None]
    return KeyCodes(w, z, rot)


def random_keys(n: int, rng: torch.Generator) -> list[Key]:
    """``n`` training keys from a torch RNG (reproducible and resumable, unlike Key.generate; training only)."""
    raw = torch.randint(0, 256, (n, 32), generator=rng, dtype=torch.int64)
    return [Key(bytes(r.tolist())) for r in raw]


# -- the network -------------------------------------------------------------------------------------------
class Mixer(nn.Module):
    """``forward(ws_real[N,L,D], e[N,E], key: KeyCodes, generator, psi) -> ws[N,L,D]`` (see module docstring).
    The generator is passed in, not held: it is frozen and not part of the mixer's weights."""

    def __init__(self,
                 num_ws: int,                         # W+ layers of the generator
                 w_dim: int,                          # style size of the generator
                 z_dim: int,                          # z size of the generator's mapping net
                 band: Sequence[int],                 # W+ layers the mixer writes (the plan's identity band)
                 key_layers: Sequence[int] = (),      # layers copied from the key outside the band ('code' plan)
                 emb_dim: int = 128,                  # recogniser embedding size (SFace: 128)
                 hidden: int = 512,                   # width of f
                 depth: int = 3,                      # linear layers in f (>= 1)
                 alpha: float = 1.0,                  # initial person/key balance in z space
                 carry: bool = True,                  # learnt per-layer carry of the photo's own band (starts 0)
                 id_net: str = "sface",               # recogniser whose embedding is e (a loss net, never an eval net)
                 ):
        super().__init__()
        self.num_ws, self.w_dim, self.z_dim, self.emb_dim = int(num_ws), int(w_dim), int(z_dim), int(emb_dim)
        self.band = [int(i) for i in band]
        self.key_layers = [int(i) for i in key_layers if int(i) not in self.band]
        if not self.band or len(set(self.band)) != len(self.band) or min(self.band) < 0 or max(self.band) >= num_ws:
            raise ValueError(f"band {list(band)} must be distinct W+ layers within 0..{num_ws - 1}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.hidden, self.depth, self.id_net, self.use_carry = int(hidden), int(depth), str(id_net), bool(carry)
        self.alpha_init = float(alpha)
        # f(e) = skip(e) + mlp(e): the skip is semi-orthogonal (it keeps the recogniser's cosines: different people
        # ~0.1, same person ~0.6 in SFace) and the MLP's last layer starts at zero, so a new mixer starts from the
        # embedding's own geometry. (A plain MLP with biases starts with every person at nearly one direction:
        # same-key pairs then share a pseudo-identity, SFace cos 0.75, measured.)
        self.skip = nn.Linear(self.emb_dim, self.z_dim, bias=False)
        nn.init.orthogonal_(self.skip.weight)
        layers: list[nn.Module] = []
        d_in = self.emb_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(d_in, hidden), nn.LeakyReLU(0.2)]
            d_in = hidden
        layers.append(nn.Linear(d_in, self.z_dim))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.f = nn.Sequential(*layers)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(max(alpha, 1e-6))))
        self.carry = nn.Parameter(torch.zeros(len(self.band))) if carry else None

    def config(self) -> dict:
        return dict(num_ws=self.num_ws, w_dim=self.w_dim, z_dim=self.z_dim, band=self.band, key_layers=self.key_layers,
                    emb_dim=self.emb_dim, hidden=self.hidden, depth=self.depth, alpha=self.alpha_init,
                    carry=self.use_carry, id_net=self.id_net)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def person_dir(self, e: torch.Tensor) -> torch.Tensor:
        """e[N,E] (unit norm) -> the key-independent person direction u[N,Z] (unit norm), before the rotation."""
        assert e.dim() == 2 and e.shape[1] == self.emb_dim, f"e must be [N,{self.emb_dim}], got {tuple(e.shape)}"
        return F.normalize(self.skip(e) + self.f(e), dim=1)

    def person_z(self, e: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """e[N,E] (unit norm), rot[N,Z,Z] -> the person term [N,Z] (norm alpha * sqrt(Z))."""
        assert rot.shape == (e.shape[0], self.z_dim, self.z_dim), tuple(rot.shape)
        u = self.person_dir(e)
        return self.alpha * math.sqrt(self.z_dim) * torch.bmm(rot, u.unsqueeze(2)).squeeze(2)

    def pseudo_w(self, e: torch.Tensor, key: KeyCodes, generator, psi: float) -> torch.Tensor:
        """The pseudo-identity's style w[N,D] (mapping of the key's z plus the person term, truncated)."""
        z = key.z + self.person_z(e, key.rot)
        return generator.truncate(generator.mapping(z), psi)

    def forward(self, ws_real: torch.Tensor, e: torch.Tensor, key: KeyCodes, generator,
                psi: float, return_pseudo: bool = False):
        """-> ws[N,L,D]; with ``return_pseudo`` also the band's mapping output w[N,D] (the latent prior's anchor)."""
        n = ws_real.shape[0]
        assert ws_real.shape[1:] == (self.num_ws, self.w_dim), f"ws_real {tuple(ws_real.shape)}"
        assert len(key) == n and key.w.shape[1:] == ws_real.shape[1:], (len(key), tuple(ws_real.shape))
        assert generator.z_dim == self.z_dim and generator.w_dim == self.w_dim, "generator does not fit the mixer"
        w = self.pseudo_w(e, key, generator, psi)                             # [N,D]
        band = w[:, None, :].expand(n, len(self.band), self.w_dim)
        if self.carry is not None:
            avg = generator.latent_avg.to(ws_real.dtype)
            band = band + self.carry[None, :, None] * (ws_real[:, self.band] - avg)
        out = ws_real.clone()
        if self.key_layers:
            out[:, self.key_layers] = key.w[:, self.key_layers].to(out.dtype)
        out[:, self.band] = band
        assert out.shape == ws_real.shape
        return (out, w) if return_pseudo else out


# -- weights -----------------------------------------------------------------------------------------------
def export_mixer(mixer: Mixer, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Our safetensors + JSON (float32: the round trip is bit-exact; the net is ~2 MB)."""
    from .models.io import save_model
    return save_model(mixer, path, dict(arch=ARCH, mixer=mixer.config()), meta or {}, fp16=False)


def load_mixer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Mixer:
    from .models.io import load_state
    path = Path(path)
    state, cfg = load_state(path)
    if cfg.get("arch") != ARCH:
        raise CheckpointFormatError(f"{path}: not a mixer weights file (arch={cfg.get('arch')!r}); expected one "
                                    "written by `faceanonymixer train mixer --export`")
    try:
        m = Mixer(**cfg["mixer"])
        m.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: weights do not match the mixer config beside them: {e}") from e
    return m.to(device).eval().requires_grad_(False)


# -- protection with a loaded Protector --------------------------------------------------------------------
def check_fits(mixer: Mixer, protector) -> None:
    """Raise a clear error when a mixer was trained for another generator or band than the protector's."""
    G, plan = protector.generator, protector.plan
    if (G.num_ws, G.w_dim, G.z_dim) != (mixer.num_ws, mixer.w_dim, mixer.z_dim):
        raise FaceAnonyMixerError(f"the mixer was trained for a generator with {mixer.num_ws}x{mixer.w_dim} W+ codes "
                                  f"and z_dim {mixer.z_dim}; this generator has {G.num_ws}x{G.w_dim}, z_dim {G.z_dim}")
    key_only = [i for i in plan.key_layers if i not in plan.optimised_layers]
    if list(plan.optimised_layers) != mixer.band or key_only != mixer.key_layers:
        raise FaceAnonyMixerError(f"the mixer writes W+ layers {mixer.band} (key layers {mixer.key_layers}) but the "
                                  f"protector's identity band is {list(plan.optimised_layers)} (key layers "
                                  f"{key_only}, assignment '{plan.assignment}'); use the mixing config the mixer "
                                  "was trained with")


def embed_for_mixer(mixer: Mixer, protector, x: torch.Tensor) -> torch.Tensor:
    """The mixer's recogniser embedding of aligned x[N,3,R,R] in [-1,1] -> [N,E] (the protector's id_net when it
    is that recogniser, else loaded by name)."""
    rec = protector.id_net
    if getattr(rec, "name", None) != mixer.id_net:
        rec = getattr(protector, "_mixer_id_net", None)
        if getattr(rec, "name", None) != mixer.id_net:          # loaded once per protector
            from .fr import get_recogniser
            rec = protector._mixer_id_net = get_recogniser(mixer.id_net, device=protector.device)
    e = rec.embed_ffhq(x.to(protector.device)).float()
    assert e.shape == (x.shape[0], mixer.emb_dim), tuple(e.shape)
    return e


@torch.no_grad()
def protect_batch(mixer: Mixer, protector, x: torch.Tensor,
                  keys: Key | Sequence[Key]) -> tuple[torch.Tensor, torch.Tensor]:
    """Protect aligned faces x[N,3,R,R] in [-1,1] (each image alone: no image influences another) under ``keys``
    (one key for all, or one per image) with a loaded ``pipeline.Protector``: its inverter (``invert``, so its
    refinement config applies), generator, plan and key settings. Returns (images [N,3,R,R] in [-1,1], ws[N,L,D]);
    the codes are secrets like every protected latent: keep them in memory only."""
    R = protector.resolution
    assert x.dim() == 4 and x.shape[1:] == (3, R, R), f"x must be [N,3,{R},{R}], got {tuple(x.shape)}"
    n = x.shape[0]
    if isinstance(keys, Key):
        keys = [keys] * n
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} images")
    check_fits(mixer, protector)
    G = protector.generator
    mixer = mixer.to(protector.device).eval()
    cfg = protector.config.key
    uniq: dict[str, int] = {}
    codes = []
    for k in keys:
        if k.fingerprint not in uniq:
            uniq[k.fingerprint] = len(codes)
            codes.append(key_codes(k, G, cfg.context, cfg.psi))
    kc = KeyCodes.cat(codes).index(torch.tensor([uniq[k.fingerprint] for k in keys]))
    x = x.to(protector.device).float()
    ws_real = protector.invert(x)
    e = embed_for_mixer(mixer, protector, x)
    ws = mixer(ws_real, e, kc, G, key_psi(G, cfg.psi))
    return protector.synthesise(ws), ws
