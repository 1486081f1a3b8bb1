"""``faceanonymixer model-report``: measure the embedded generator / encoder against the bars of the models issue.

Writes ``model_report.json`` (every number with its count ``n``, or ``null`` with a ``reason``), a Markdown table
``model_report.md`` for the README, and images (``samples_grid.png``, ``style_mixing.png``, ``inversion.png``).

What is measured (all with our own detector and recognisers; real photos only from the *held-out* people,
``train.data.person_split(name) == 'val'``):

1. **Detection rate** of generator samples at psi 0.7: each sample is upscaled bicubically to 256 px and passed to
   YuNet (``align.detect``, default score threshold).
2. **Style mixing**, per candidate identity band ``a-b`` (inclusive W+ indices): sample i keeps its w everywhere
   except layers a..b, which come from sample i's partner (another seed). Identity change = SFace cosine
   (``embed_ffhq``) between the original and the mixed image; pose change = mean over the 5 landmarks of their
   displacement (detected on both, mapped back into the generator's FFHQ frame) divided by the original's
   inter-ocular distance. The same two numbers are given for the coarse layers ``0..a-1`` and the fine layers
   ``b+1..`` as context.
3. **FD-dlib**: Fréchet distance between Gaussians fitted to dlib-resnet embeddings (L2-normalised, 128-D) of
   ArcFace-aligned crops (detect + ``align_arcface``). Reference = real set A (held-out LFW photos at their own
   resolution). Compared: generator samples, DCGAN samples (if ``models.dcgan.load_dcgan`` exists), a disjoint real
   set B (people disjoint from A: the floor), and set B after FFHQ alignment to the generator resolution
   (the floor for a perfect generator of that resolution). Not an FID: no Inception network is involved, and with a
   few hundred faces in 128-D the value carries a sample-size bias, so only compare rows measured with equal n.
4. **Encoder** on set A: FFHQ-aligned crop at the generator resolution -> encode -> synthesise. Reconstruction
   detection rate, SFace and dlib cosine(aligned original, reconstruction) via ``embed_ffhq``, PSNR and SSIM at the
   generator resolution (SSIM: 11x11 Gaussian window, sigma 1.5, per RGB channel on [0,1] then averaged, 'valid'
   window positions only, K1=0.01, K2=0.03 - the Wang et al. 2004 definition).

A missing model (no encoder yet, no dlib, no data folder) skips its section with the reason recorded; an
unexpected error in one section is recorded too (exit code 1) and the other sections still run.
"""
from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HELP = "measure the embedded generator/encoder (detection, style mixing, FD-dlib, inversion) -> JSON + Markdown"
log = logging.getLogger(__name__)

PSI = 0.7
DETECT_SIDE = 256          # samples are upscaled to this side (bicubic) before detection
GRID_SEEDS = list(range(64))
MIX_A_SEEDS = [0, 1, 2, 3]          # style-mixing grid rows (source A)
MIX_B_SEEDS = [4, 5, 6, 7, 8]       # style-mixing grid columns (source B)
BARS = {"detection_rate": (">=", 0.90), "mix_identity_cos": ("<", 0.30), "mix_pose_change": ("<", 0.05),
        "recon_detection_rate": (">=", 0.95), "recon_sface_cos": (">=", 0.50)}
DEFAULT_MIX = "1-6,1-5,1-3,3-7"


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--generator", default="fam-stylegan2-64", help="registry name or generator file")
    p.add_argument("--encoder", default="fam-e4e-64", help="registry name or encoder weights file")
    p.add_argument("--data", default="../shared/data/lfw/images",
                   help="identity folders <root>/<person>/<images>; only held-out ('val') people are used")
    p.add_argument("--n-samples", type=int, default=256, help="generator samples for the metrics (default 256)")
    p.add_argument("--n-real", type=int, default=256, help="real faces per real set (default 256)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="first sample seed and the seed of the real-photo selection (default 0)")
    p.add_argument("--mix-layers", default=DEFAULT_MIX,
                   help=f"comma list of inclusive W+ ranges tried as the identity band (default {DEFAULT_MIX})")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="also measure encoder + N steps of the pipeline's latent refinement (0 = skip; paper: 150)")
    p.add_argument("--refine-n", type=int, default=32, help="real faces (the first of set A) for the refinement rows")
    p.add_argument("--refine-lr", type=float, default=None, help="refinement Adam lr (default: the pipeline's)")
    p.add_argument("--device", default="cpu", help="torch device for the generator/encoder/SFace (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0 = leave as is)")


def command_line(args) -> str:
    """The exact command that reproduces this report (every option spelled out)."""
    parts = ["faceanonymixer", "model-report", "--generator", str(args.generator), "--encoder", str(args.encoder),
             "--data", str(args.data), "--n-samples", str(args.n_samples), "--n-real", str(args.n_real),
             "--out", str(args.out), "--seed", str(args.seed), "--mix-layers", str(args.mix_layers)]
    if getattr(args, "refine_steps", 0):
        parts += ["--refine-steps", str(args.refine_steps), "--refine-n", str(args.refine_n)]
        if args.refine_lr is not None:
            parts += ["--refine-lr", str(args.refine_lr)]
    if getattr(args, "device", "cpu") != "cpu":
        parts += ["--device", str(args.device)]
    return shlex.join(parts)


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """'1-3,3-7,5' -> [(1, 3), (3, 7), (5, 5)] (inclusive)."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        a, b = int(a), int(b) if b else int(a)
        if b < a:
            raise ValueError(f"layer range '{part}': end before start")
        out.append((a, b))
    if not out:
        raise ValueError(f"no layer ranges in '{spec}'")
    return out


def _fmt_range(layers) -> str:
    layers = list(layers)
    if not layers:
        return "-"
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


# ----------------------------------------------------------------------------------------------------------
# Metric helpers (pure functions, tested directly)
# ----------------------------------------------------------------------------------------------------------
def metric(value, n: int, reason: str | None = None, **extra) -> dict:
    """One reported number: {'value': float|None, 'n': count, ['reason'], ...}. Non-finite -> None + reason."""
    v = None if value is None else float(value)
    if v is not None and not math.isfinite(v):
        reason = reason or f"not finite ({v})"
        v = None
    if v is None and not reason:
        reason = "no data"
    d = {"value": v, "n": int(n)}
    if v is None:
        d["reason"] = reason
    d.update(extra)
    return d


def mean_metric(values, what: str = "items", **extra) -> dict:
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return metric(None, 0, f"no {what} to average", **extra)
    return metric(vals.mean(), vals.size, std=float(vals.std()), median=float(np.median(vals)), **extra)


def with_bar(m: dict, key: str) -> dict:
    op, thr = BARS[key]
    m = dict(m, bar=f"{op} {thr:g}")
    m["pass"] = None if m["value"] is None else bool(m["value"] >= thr if op == ">=" else m["value"] < thr)
    return m


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image: x, y [N,C,H,W] in [0, data_range] -> [N]. 11x11 Gaussian window (sigma 1.5), computed per
    channel and averaged over channels and all 'valid' window positions (no padding); K1=0.01, K2=0.03."""
    assert x.shape == y.shape and x.ndim == 4 and min(x.shape[2:]) >= 11, (tuple(x.shape), tuple(y.shape))
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = gaussian_window().to(x.device)[None, None].repeat(c, 1, 1, 1)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3)).float()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image: x, y [N,C,H,W] in [0, data_range] -> [N] (MSE floored at 1e-10: 100 dB cap)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); tr sqrt(S1 S2) via the symmetric S1^(1/2) S2 S1^(1/2)
    (same eigenvalues), so singular covariances (n <= dim) are fine."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    ev, evec = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (evec * np.sqrt(np.clip(ev, 0, None))) @ evec.T
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [Na,D] and b [Nb,D] (unbiased covariances)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] and len(a) >= 2 and len(b) >= 2, (a.shape, b.shape)
    return frechet_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def pose_change(lm_a: np.ndarray, lm_b: np.ndarray) -> np.ndarray:
    """Mean 5-landmark displacement / inter-ocular distance of a: lm_a, lm_b [N,5,2] -> [N]."""
    iod = np.linalg.norm(lm_a[:, 0] - lm_a[:, 1], axis=1)
    return np.linalg.norm(lm_a - lm_b, axis=2).mean(1) / np.maximum(iod, 1e-6)


# ----------------------------------------------------------------------------------------------------------
# Images -> detections / embeddings
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Detections:
    found: np.ndarray                    # [N] bool
    lm: np.ndarray                       # [N,5,2] landmarks in the input frame (nan where not found)
    scores: np.ndarray                   # [N] detector score (nan where not found)
    crops: np.ndarray                    # [M,112,112,3] uint8 ArcFace crops of the found faces (if asked)

    @property
    def rate(self) -> float:
        return float(self.found.mean()) if len(self.found) else float("nan")


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> [N,H,W,3] uint8."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def detect_batch(x: torch.Tensor, crops: bool = False, side: int = DETECT_SIDE) -> Detections:
    """x[N,3,R,R] in [-1,1] -> bicubic upscale to ``side`` (when R < side), YuNet, largest face; landmarks are
    mapped back to the R-pixel frame (index coordinates); optional ArcFace crops from the upscaled image."""
    from ..align import align_arcface, detect
    n, r = x.shape[0], x.shape[-1]
    found = np.zeros(n, bool)
    lm = np.full((n, 5, 2), np.nan)
    scores = np.full(n, np.nan)
    out_crops = []
    for i0 in range(0, n, 32):
        xb = x[i0:i0 + 32].detach().float().cpu()
        if r < side:
            xb = F.interpolate(xb, size=(side, side), mode="bicubic", align_corners=False)
        s = xb.shape[-1] / r
        for j, img in enumerate(to_uint8_hwc(xb)):
            faces = detect(img)
            if not faces:
                continue
            f = max(faces, key=lambda fc: fc.area)
            i = i0 + j
            found[i] = True
            scores[i] = f.score
            lm[i] = (f.landmarks5.astype(np.float64) + 0.5) / s - 0.5
            if crops:
                out_crops.append(align_arcface(img, f.landmarks5))
    c = np.stack(out_crops) if out_crops else np.zeros((0, 112, 112, 3), np.uint8)
    return Detections(found, lm, scores, c)


def embed_crops(rec, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    """[M,112,112,3] uint8 ArcFace crops -> [M,dim] L2-normalised embeddings (numpy)."""
    if len(crops) == 0:
        return np.zeros((0, rec.dim), np.float32)
    out = []
    for i in range(0, len(crops), batch):
        t = torch.from_numpy(crops[i:i + batch]).permute(0, 3, 1, 2).float().div(255.0)
        with torch.no_grad():
            out.append(rec.embed(t.to(rec.device)).float().cpu().numpy())
    return np.concatenate(out)


def embed_ffhq(rec, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """x[N,3,R,R] in [-1,1] FFHQ-aligned -> [N,dim] on the CPU."""
    out = []
    for i in range(0, len(x), batch):
        with torch.no_grad():
            out.append(rec.embed_ffhq(x[i:i + batch].to(rec.device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, rec.dim)


# ----------------------------------------------------------------------------------------------------------
# Generator helpers
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def seed_ws(G, seeds, psi: float = PSI) -> torch.Tensor:
    """[N,w_dim] truncated w of ``seeds`` (z seeded exactly as ``faceanonymixer generate``)."""
    z = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    dev = G.latent_avg.device
    return G.truncate(G.mapping(z.to(dev)), psi)


@torch.no_grad()
def synth(G, ws: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """ws [N,num_ws,w_dim] (or w [N,w_dim], broadcast) -> images [N,3,R,R] in [-1,1] on the CPU (const noise)."""
    if ws.ndim == 2:
        ws = ws.unsqueeze(1).repeat(1, G.num_ws, 1)
    dev = G.latent_avg.device
    out = [G.synthesis(ws[i:i + batch].to(dev), noise_mode="const").float().clamp(-1, 1).cpu()
           for i in range(0, len(ws), batch)]
    return torch.cat(out)


def mix(w_a: torch.Tensor, w_b: torch.Tensor, layers, num_ws: int) -> torch.Tensor:
    """W+ codes of A with ``layers`` taken from B: w_a, w_b [N,w_dim] -> [N,num_ws,w_dim]."""
    ws = w_a.unsqueeze(1).repeat(1, num_ws, 1)
    idx = list(layers)
    if idx:
        ws[:, idx] = w_b.unsqueeze(1).expand(-1, len(idx), -1).to(ws.dtype)
    return ws


# ----------------------------------------------------------------------------------------------------------
# Real held-out photos
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RealSet:
    name: str
    people: list[str]
    files: list[str] = field(default_factory=list)        # relative to the data root, faces found
    arc: list[np.ndarray] = field(default_factory=list)   # ArcFace 112 crops
    ffhq: list[np.ndarray] = field(default_factory=list)  # FFHQ-aligned crops at the generator resolution
    lm5: list[np.ndarray] = field(default_factory=list)   # [5,2] landmarks of the face in its photo
    person: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def info(self) -> dict:
        return dict(n_people=len(set(self.person)), n_people_available=len(self.people), n_images=len(self.files),
                    n_no_face=len(self.failed), files=self.files,
                    failed=[dict(file=f, error=e[:200]) for f, e in self.failed])

    def ffhq_tensor(self) -> torch.Tensor:
        if not self.ffhq:
            return torch.zeros(0, 3, 1, 1)
        return torch.from_numpy(np.stack(self.ffhq)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _round_robin(people: dict[str, list[Path]], names: list[str]) -> list[tuple[str, Path]]:
    """First image of every person, then every second image, ...: as many identities as possible first."""
    out, k = [], 0
    while True:
        added = False
        for p in names:
            if k < len(people[p]):
                out.append((p, people[p][k]))
                added = True
        if not added:
            return out
        k += 1


def load_real_sets(root: Path, n: int, seed: int, resolution: int) -> tuple[RealSet, RealSet, dict]:
    """Two real sets of up to ``n`` faces each from the held-out ('val') people, with disjoint people
    (shuffled with ``seed``, alternately assigned to A and B); images without a face are skipped and listed."""
    import random

    from ..align import align_arcface, align_ffhq, pick_face
    from ..errors import FaceAnonyMixerError
    from ..images import read_image
    from ..train.data import list_people

    people = list_people(root, "val")
    names = sorted(people)
    random.Random(seed).shuffle(names)
    sets = (RealSet("A", names[0::2]), RealSet("B", names[1::2]))
    for s in sets:
        for person, f in _round_robin(people, s.people):
            if len(s.files) >= n:
                break
            rel = str(f.relative_to(root))
            try:
                img = read_image(f)
                face, _ = pick_face(img, source=str(f), select="center")  # LFW: the centred subject
                s.arc.append(align_arcface(img, face.landmarks5))
                s.ffhq.append(align_ffhq(img, face.landmarks5, resolution))
                s.lm5.append(np.asarray(face.landmarks5, np.float64))
            except FaceAnonyMixerError as e:
                s.failed.append((rel, str(e).splitlines()[0]))
                continue
            s.files.append(rel)
            s.person.append(person)
    n_train = sum(1 for d in Path(root).iterdir() if d.is_dir()) - len(people)
    info = dict(root=str(root), split="val", n_val_people=len(people),
                n_val_images=sum(len(v) for v in people.values()), n_other_people_ignored=n_train,
                selection=f"val people shuffled with seed {seed}, alternately to A/B (disjoint people); "
                          "images taken round-robin over people (one per person first); face = the detection "
                          "containing the image centre (align.select_face 'center')")
    return sets[0], sets[1], info


# ----------------------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------------------
def _label(img: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    from PIL import Image, ImageDraw
    bar = Image.new("RGB", (img.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(bar).text((2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(bar), img], axis=0)


def save_image(arr: np.ndarray, path: Path, scale: int = 1) -> Path:
    from PIL import Image
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp.png")
    im.save(tmp)
    tmp.replace(path)
    return path


def style_mixing_grid(G, bands: dict[str, list[int]], a_seeds, b_seeds) -> np.ndarray:
    """Panels side by side (one per band): top row B samples, left column A samples, cell (i, j) = A_i with the
    band's layers taken from B_j."""
    from ..train.grid import make_grid
    w_a, w_b = seed_ws(G, a_seeds), seed_ws(G, b_seeds)
    img_a, img_b = to_uint8_hwc(synth(G, w_a)), to_uint8_hwc(synth(G, w_b))
    r = G.resolution
    blank = np.full((1, r, r, 3), 255, np.uint8)
    panels = []
    for name, layers in bands.items():
        cells = [blank, img_b]
        for i in range(len(a_seeds)):
            wa = w_a[i:i + 1].expand(len(b_seeds), -1)
            cells += [img_a[i:i + 1], to_uint8_hwc(synth(G, mix(wa, w_b, layers, G.num_ws)))]
        grid = make_grid(np.concatenate(cells), nrow=len(b_seeds) + 1)
        panels.append(_label(grid, f"{name} (W+ {_fmt_range(layers)}) from top row"))
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------
class Skip(Exception):
    """A section that cannot run (missing model/data): recorded with its reason."""


class Report:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dev = torch.device(args.device)
        self.data: dict = {}
        self.G = None
        self.inv = None
        self.real_a = self.real_b = None
        self.errors = 0
        self._cache: dict = {}

    # --- plumbing -------------------------------------------------------------------------------------
    def section(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            res = fn()
            res = {"status": "ok", **(res or {})}
        except Skip as e:
            res = {"status": "skipped", "reason": str(e)}
            log.warning("model-report: %s skipped: %s", name, e)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            from ..errors import FaceAnonyMixerError
            if isinstance(e, FaceAnonyMixerError):
                res = {"status": "skipped", "reason": str(e)}
                log.warning("model-report: %s skipped: %s", name, e)
            else:
                self.errors += 1
                res = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
                log.error("model-report: %s failed:\n%s", name, traceback.format_exc())
        res["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["sections"][name] = res
        log.info("model-report: %s %s (%.1f s)", name, res["status"], res["seconds"])

    def need_G(self):
        if self.G is None:
            raise Skip(f"no generator: {self.data['models']['generator'].get('reason')}")
        return self.G

    def rec(self, name: str):
        from ..fr import get_recogniser
        return get_recogniser(name, device=self.dev if name != "dlib-resnet" else "cpu")

    # --- models ---------------------------------------------------------------------------------------
    def load_models(self):
        from ..errors import FaceAnonyMixerError
        from ..models.loading import load_generator, resolve_path
        models = {}
        a = self.args
        try:
            path = resolve_path(a.generator)
            self.G = load_generator(path, device=self.dev)
            info = dict(path=str(path), resolution=self.G.resolution, num_ws=self.G.num_ws, w_dim=self.G.w_dim,
                        z_dim=self.G.z_dim)
            if path.suffix == ".safetensors":
                from ..models.io import load_meta
                info["meta"] = load_meta(path)
            models["generator"] = info
        except FaceAnonyMixerError as e:
            models["generator"] = {"path": None, "reason": str(e)}
        if self.G is not None:
            try:
                from ..models.encoders import load_inverter
                from ..registry import MODELS, locate
                self.inv = load_inverter(a.encoder, generator=self.G, device=self.dev)
                epath = locate(a.encoder) if a.encoder in MODELS else Path(a.encoder)
                models["encoder"] = {"path": str(epath)}
            except FaceAnonyMixerError as e:
                models["encoder"] = {"path": None, "reason": str(e)}
        else:
            models["encoder"] = {"path": None, "reason": "not loaded: no generator to decode its codes"}
        self.data["models"] = models

    def dcgan(self):
        try:
            from ..models.dcgan import load_dcgan
        except ImportError as e:
            raise Skip(f"DCGAN adapter not available (faceanonymixer.models.dcgan.load_dcgan: {e})") from None
        return load_dcgan()

    # --- real photos ----------------------------------------------------------------------------------
    def load_real(self):
        root = Path(self.args.data)
        if not root.is_dir():
            raise Skip(f"data folder {root} not found (identity folders <root>/<person>/<images>)")
        res = self.G.resolution if self.G is not None else 64
        self.real_a, self.real_b, info = load_real_sets(root, self.args.n_real, self.args.seed, res)
        info["ffhq_resolution"] = res
        info["set_a"], info["set_b"] = self.real_a.info(), self.real_b.info()
        self.data["real_data"] = info
        if not self.real_a.files:
            raise Skip(f"no held-out ('val') face found under {root}")
        return {"n_a": len(self.real_a.files), "n_b": len(self.real_b.files)}

    # --- 1. samples and grids -------------------------------------------------------------------------
    def samples(self):
        from ..train.commands_generate import generate
        from ..train.grid import save_grid
        G = self.need_G()
        scale = max(1, 128 // G.resolution)
        grid = generate(G, GRID_SEEDS, PSI)
        save_grid(grid, self.out / "samples_grid.png", nrow=8, scale=scale)
        # style mixing panels from the first candidate band: coarse below it, middle = it, fine above it
        a, b = self.ranges[0]
        if b >= G.num_ws:
            a, b = self.default_band()
        bands = {"coarse": list(range(0, a)), "middle": list(range(a, b + 1)),
                 "fine": list(range(b + 1, G.num_ws))}
        bands = {k: v for k, v in bands.items() if v}
        save_image(style_mixing_grid(G, bands, MIX_A_SEEDS, MIX_B_SEEDS), self.out / "style_mixing.png", scale)
        return {"psi": PSI, "grid_seeds": f"{GRID_SEEDS[0]}-{GRID_SEEDS[-1]}", "grid_scale": scale,
                "style_mixing": {"a_seeds": MIX_A_SEEDS, "b_seeds": MIX_B_SEEDS,
                                 "bands": {k: _fmt_range(v) for k, v in bands.items()}},
                "images": ["samples_grid.png", "style_mixing.png"]}

    def default_band(self):
        """The pipeline's identity band for this generator (its weights' meta band, else the scaling rule)."""
        from ..mixing import make_plan
        ident = make_plan(self.G.num_ws, None, self.G.resolution, getattr(self.G, "identity_layers", None)).key_layers
        return ident[0], ident[-1]

    # --- 2. detection rate ----------------------------------------------------------------------------
    def sample_set(self):
        if "samples" not in self._cache:
            G = self.need_G()
            n, s0 = self.args.n_samples, self.args.seed
            seeds = list(range(s0, s0 + n))
            partners = list(range(s0 + n, s0 + 2 * n))
            w = seed_ws(G, seeds)
            x = synth(G, w)
            det = detect_batch(x, crops=True)
            self._cache["samples"] = dict(seeds=seeds, partners=partners, w=w, w_p=seed_ws(G, partners), x=x,
                                          det=det)
        return self._cache["samples"]

    def detection(self):
        s = self.sample_set()
        det = s["det"]
        n = len(det.found)
        rate = with_bar(metric(det.rate, n), "detection_rate")
        return {"psi": PSI, "seeds": f"{s['seeds'][0]}-{s['seeds'][-1]}",
                "method": f"bicubic upscale to {DETECT_SIDE} px, YuNet (score >= 0.6), largest face",
                "detection_rate": rate,
                "mean_score": mean_metric(det.scores[det.found], "detected samples")}

    # --- 3. style mixing ------------------------------------------------------------------------------
    def mixing(self):
        G = self.need_G()
        s = self.sample_set()
        sface = self.rec("sface")
        e0 = embed_ffhq(sface, s["x"])
        det0 = s["det"]
        cache: dict[tuple, dict] = {}

        def measure(layers) -> dict:
            key = tuple(layers)
            if key in cache:
                return cache[key]
            xm = synth(G, mix(s["w"], s["w_p"], layers, G.num_ws))
            cos = torch.nn.functional.cosine_similarity(e0, embed_ffhq(sface, xm), dim=1).numpy()
            dm = detect_batch(xm)
            both = det0.found & dm.found
            pc = pose_change(det0.lm[both], dm.lm[both]) if both.any() else np.zeros(0)
            res = {"layers": _fmt_range(layers),
                   "sface_cos": mean_metric(cos, "samples"),
                   "pose_change_iod": mean_metric(pc, "pairs detected on both sides"),
                   "mixed_detection_rate": metric(dm.rate, len(dm.found))}
            cache[key] = res
            return res

        out = {}
        cands = {}
        for a, b in self.ranges:
            name = f"{a}-{b}"
            if a < 0 or b >= G.num_ws:
                cands[name] = {"status": "skipped", "reason": f"outside the generator's W+ indices 0-{G.num_ws - 1}"}
                continue
            mid = measure(range(a, b + 1))
            c = {"middle": dict(mid, sface_cos=with_bar(mid["sface_cos"], "mix_identity_cos"),
                                pose_change_iod=with_bar(mid["pose_change_iod"], "mix_pose_change"))}
            c["coarse"] = measure(range(0, a)) if a > 0 else {"layers": "-", "reason": "no layers below the band"}
            c["fine"] = (measure(range(b + 1, G.num_ws)) if b < G.num_ws - 1
                         else {"layers": "-", "reason": "no layers above the band"})
            p1, p2 = c["middle"]["sface_cos"]["pass"], c["middle"]["pose_change_iod"]["pass"]
            c["pass"] = None if p1 is None or p2 is None else bool(p1 and p2)
            cands[name] = c
        out["candidates"] = cands
        out["passing"] = [k for k, v in cands.items() if v.get("pass")]
        every = measure(range(G.num_ws))              # another sample altogether: the scale of both measures
        out["context_sface_cos_unrelated_samples"] = every["sface_cos"]
        out["context_pose_change_unrelated_samples"] = every["pose_change_iod"]
        out["method"] = ("sample i (seed s) keeps its w except the listed W+ layers, taken from seed s + n_samples; "
                         "identity = SFace cosine via embed_ffhq on the generator frame; pose = mean 5-landmark "
                         f"displacement (YuNet on {DETECT_SIDE}-px bicubic upscales, mapped to the generator "
                         "frame) / inter-ocular distance of the original")
        lo, hi = self.default_band()
        out["method_identity_band"] = _fmt_range(range(lo, hi + 1))  # mixing.make_plan for this generator
        return out

    # --- 4. FD-dlib -----------------------------------------------------------------------------------
    def fd(self):
        if self.real_a is None or not self.real_a.files:
            raise Skip(self.data["sections"].get("real_data", {}).get("reason", "no real held-out faces"))
        dlib = self.rec("dlib-resnet")
        ref = embed_crops(dlib, np.stack(self.real_a.arc))
        rows = {}

        def row(name, emb, what):
            if len(emb) < 2 or len(ref) < 2:
                rows[name] = metric(None, len(emb), f"need >= 2 embedded faces on each side; {what}")
            else:
                rows[name] = metric(frechet_distance(emb, ref), len(emb), n_reference=len(ref), what=what)

        if self.G is not None:
            det = self.sample_set()["det"]
            row("generator", embed_crops(dlib, det.crops),
                f"generator samples psi {PSI} (detected {int(det.found.sum())}/{len(det.found)})")
        else:
            rows["generator"] = metric(None, 0, "no generator")
        try:
            dc = self.dcgan()
            xd = dc.sample(self.args.n_samples, seed=self.args.seed)
            assert xd.ndim == 4 and xd.shape[1] == 3, tuple(xd.shape)
            dd = detect_batch(xd.float().cpu(), crops=True)
            row("dcgan", embed_crops(dlib, dd.crops),
                f"DCGAN samples (detected {int(dd.found.sum())}/{len(dd.found)})")
            rows["dcgan"]["detection_rate"] = dd.rate
        except Skip as e:
            rows["dcgan"] = metric(None, 0, str(e))
        except Exception as e:  # noqa: BLE001 - an optional comparison; the colleague's adapter may be in flux
            rows["dcgan"] = metric(None, 0, f"DCGAN failed: {type(e).__name__}: {e}")
        if self.real_b.files:
            row("real_floor", embed_crops(dlib, np.stack(self.real_b.arc)),
                "real set B (held-out people disjoint from A), full-resolution photos")
            xb = self.real_b.ffhq_tensor()
            db = detect_batch(xb, crops=True)
            row("real_at_generator_resolution", embed_crops(dlib, db.crops),
                f"real set B FFHQ-aligned to {xb.shape[-1]} px then treated like samples "
                f"(detected {int(db.found.sum())}/{len(db.found)})")
        else:
            rows["real_floor"] = metric(None, 0, "real set B is empty (too few held-out people)")
            rows["real_at_generator_resolution"] = metric(None, 0, "real set B is empty")
        return {"name": "FD-dlib", "reference": f"real set A ({len(ref)} held-out LFW faces)",
                "method": "Fréchet distance of Gaussians fitted to L2-normalised dlib-resnet embeddings of "
                          "ArcFace-aligned crops (YuNet + align_arcface; generated/64-px images upscaled bicubically "
                          f"to {DETECT_SIDE} px first). Not an FID; biased by sample size: compare equal n.",
                "rows": rows}

    # --- 5. encoder -----------------------------------------------------------------------------------
    def encoder(self):
        G = self.need_G()
        if self.inv is None:
            raise Skip(f"no encoder: {self.data['models']['encoder'].get('reason')}")
        if self.real_a is None or not self.real_a.files:
            raise Skip("no real held-out faces")
        x = self.real_a.ffhq_tensor()
        recs = []
        for i in range(0, len(x), 32):
            with torch.no_grad():
                ws = self.inv.encode(x[i:i + 32].to(self.dev))
                recs.append(G.synthesis(ws, noise_mode="const").float().clamp(-1, 1).cpu())
        y = torch.cat(recs)
        out = self._recon_metrics(x, y)
        out["method"] = ("held-out set A, FFHQ-aligned by our detector/aligner at the generator resolution -> "
                         "encode -> synthesis (const noise); cosines via embed_ffhq on both")
        out["images"] = ["inversion.png"]
        self._pairs_image(x, y, "inversion.png")
        return out

    def refined(self):
        """Encoder + the pipeline's latent-only refinement (pipeline.refine_latents) on the first refine_n faces."""
        from ..losses import get_attribute_encoder
        from ..pipeline import RefineConfig, refine_latents
        a = self.args
        G = self.need_G()
        if self.inv is None or self.real_a is None or not self.real_a.files:
            raise Skip("no encoder or no real held-out faces")
        x = self.real_a.ffhq_tensor()[: a.refine_n]
        rc = RefineConfig(steps=a.refine_steps)
        if a.refine_lr is not None:
            rc.lr = a.refine_lr
        attr = get_attribute_encoder("sface-early", self.rec("sface"))
        recs = []
        for i in range(0, len(x), 16):
            xb = x[i:i + 16].to(self.dev)
            with torch.no_grad():
                ws = self.inv.encode(xb)
            ws = refine_latents(G, ws, xb, rc, attr)
            with torch.no_grad():
                recs.append(G.synthesis(ws, noise_mode="const").float().clamp(-1, 1).cpu())
        y = torch.cat(recs)
        out = self._recon_metrics(x, y)
        out.update(steps=rc.steps, lr=rc.lr, w_mse=rc.w_mse, w_perc=rc.w_perc, images=["inversion_refined.png"],
                   method="as the encoder rows, then pipeline.refine_latents (Adam on W+, MSE + w_perc * SFace-early "
                          "feature distance) on the first refine_n faces of set A")
        self._pairs_image(x, y, "inversion_refined.png")
        return out

    def _recon_metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        G = self.need_G()
        n = len(x)
        dr = detect_batch(y)
        sface, dlib = self.rec("sface"), self.rec("dlib-resnet")
        es_x, es_y = embed_ffhq(sface, x), embed_ffhq(sface, y)
        cos_s = F.cosine_similarity(es_x, es_y, dim=1).numpy()
        cos_d = F.cosine_similarity(embed_ffhq(dlib, x), embed_ffhq(dlib, y), dim=1).numpy()
        # a recogniser that is in no loss and feeds no encoder: the independent check of the SFace number
        fp = self.rec("faceplugin-fr")
        ef_x, ef_y = embed_ffhq(fp, x), embed_ffhq(fp, y)
        cos_f = F.cosine_similarity(ef_x, ef_y, dim=1).numpy()
        # context: original vs another person's original (what an unrelated face scores)
        persons = np.array(self.real_a.person)[:n]
        j = np.roll(np.arange(n), 1)
        other = persons != persons[j]
        imp = F.cosine_similarity(es_x, es_x[j], dim=1).numpy()[other]
        imp_f = F.cosine_similarity(ef_x, ef_x[j], dim=1).numpy()[other]
        x01, y01 = (x + 1) / 2, (y + 1) / 2
        out = {"resolution": G.resolution,
               "recon_detection_rate": with_bar(metric(dr.rate, n), "recon_detection_rate"),
               "sface_cos": with_bar(mean_metric(cos_s, "reconstructions"), "recon_sface_cos"),
               "dlib_cos": mean_metric(cos_d, "reconstructions"),
               "faceplugin_cos": mean_metric(cos_f, "reconstructions"),
               "psnr_db": mean_metric(psnr(x01, y01).numpy(), "reconstructions"),
               "ssim": (mean_metric(ssim(x01, y01).numpy(), "reconstructions") if G.resolution >= 11 else
                        metric(None, n, "SSIM needs at least 11x11 pixels")),
               "context_sface_cos_other_person": mean_metric(imp, "pairs of different people"),
               "context_faceplugin_cos_other_person": mean_metric(imp_f, "pairs of different people"),
               "ssim_definition": "11x11 Gaussian window, sigma 1.5, per RGB channel on [0,1], mean over channels "
                                  "and valid window positions, K1=0.01, K2=0.03"}
        return out

    def _pairs_image(self, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
        G = self.need_G()
        k = min(len(x), 16)
        pairs = np.concatenate([to_uint8_hwc(x[:k])[:, :, :, None], to_uint8_hwc(y[:k])[:, :, :, None]], axis=3)
        pairs = pairs.transpose(0, 3, 1, 2, 4).reshape(k * 2, G.resolution, G.resolution, 3)
        from ..train.grid import make_grid
        save_image(make_grid(pairs, nrow=8 if k >= 4 else 2 * k), self.out / name, max(1, 128 // G.resolution))

    # --- main -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        a = self.args
        import faceanonymixer
        self.ranges = parse_ranges(a.mix_layers)
        self.data = {"command": command_line(a),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "versions": {"faceanonymixer": getattr(faceanonymixer, "__version__", None),
                                  "torch": torch.__version__, "python": sys.version.split()[0]},
                     "config": {"generator": a.generator, "encoder": a.encoder, "data": a.data,
                                "n_samples": a.n_samples, "n_real": a.n_real, "seed": a.seed,
                                "mix_layers": [f"{x}-{y}" for x, y in self.ranges], "psi": PSI,
                                "detect_side": DETECT_SIDE, "device": str(a.device)},
                     "bars": {k: f"{op} {v:g}" for k, (op, v) in BARS.items()},
                     "sections": {}}
        self.load_models()
        if self.G is not None and any(b >= self.G.num_ws for _, b in self.ranges[:1]):
            log.warning("first --mix-layers range is outside the generator; the grid uses the method's band")
        self.section("real_data", self.load_real)
        self.section("samples", self.samples)
        self.section("detection", self.detection)
        self.section("mixing", self.mixing)
        self.section("fd_dlib", self.fd)
        self.section("encoder", self.encoder)
        if a.refine_steps:
            self.section("encoder_refined", self.refined)
        self.data["images"] = sorted(p.name for p in self.out.glob("*.png"))
        write_json(self.data, self.out / "model_report.json")
        (self.out / "model_report.md").write_text(markdown(self.data))
        return self.data


def write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


# ----------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------
def _v(m: dict | None, pct: bool = False, digits: int = 3) -> str:
    if not m or "value" not in m:
        return "-"
    if m["value"] is None:
        return f"n/a ({_one_line(m.get('reason', ''))})"[:200]
    v = m["value"]
    return f"{100 * v:.1f} %" if pct else f"{v:.{digits}f}"


def _one_line(text) -> str:
    """A reason as one Markdown-table-safe line."""
    return " ".join(str(text).split()).replace("|", "/")


def _pass(m: dict | None) -> str:
    if not m or m.get("pass") is None:
        return ""
    return "yes" if m["pass"] else "**no**"


def markdown(d: dict) -> str:
    L = ["# Model report (embedded generator / encoder)", "",
         f"Measured with `{d['command']}` on {d['created']}.", ""]
    g = d.get("models", {}).get("generator", {})
    e = d.get("models", {}).get("encoder", {})
    if g.get("path"):
        meta = g.get("meta", {})
        trained = f", trained on {meta['trained_images']:,} images" if "trained_images" in meta else ""
        L.append(f"Generator `{g['path']}`: {g['resolution']} px, {g['num_ws']} W+ layers{trained}.  ")
    else:
        L.append(f"Generator: not available ({_one_line(g.get('reason'))}).  ")
    L.append(f"Encoder: `{e['path']}`." if e.get("path") else f"Encoder: not available ({_one_line(e.get('reason'))}).")
    rd = d.get("real_data")
    if rd:
        def ppl(k):
            return f"{k} person" if k == 1 else f"{k} people"
        L += ["", f"Real faces: held-out ('val') people of `{rd['root']}` ({ppl(rd['n_val_people'])}); set A "
                  f"{rd['set_a']['n_images']} faces of {ppl(rd['set_a']['n_people'])}, set B (disjoint people) "
                  f"{rd['set_b']['n_images']} faces of {ppl(rd['set_b']['n_people'])}."]
    L += ["", "| what | value | n | bar | pass |", "|---|---|---|---|---|"]
    S = d["sections"]

    def add(what, m, pct=False, digits=3):
        bar = (m or {}).get("bar", "")
        if bar and pct:
            op, thr = bar.split()
            bar = f"{op} {100 * float(thr):g} %"
        L.append(f"| {what} | {_v(m, pct, digits)} | {m.get('n', '') if m else ''} | {bar} | {_pass(m)} |")

    det = S.get("detection", {})
    if det.get("status") == "ok":
        add(f"samples (psi {PSI}) detected as a face", det["detection_rate"], pct=True)
    fd = S.get("fd_dlib", {})
    if fd.get("status") == "ok":
        names = {"generator": "FD-dlib: generator samples vs real A", "dcgan": "FD-dlib: DCGAN samples vs real A",
                 "real_floor": "FD-dlib: real B vs real A (floor)",
                 "real_at_generator_resolution": "FD-dlib: real B at generator resolution vs real A"}
        for k, label in names.items():
            add(label, fd["rows"].get(k), digits=4)
    enc = S.get("encoder", {})
    if enc.get("status") == "ok":
        add("encoder: reconstructions detected as a face", enc["recon_detection_rate"], pct=True)
        add("encoder: SFace cos(aligned original, reconstruction)", enc["sface_cos"])
        add("encoder: dlib cos(aligned original, reconstruction)", enc["dlib_cos"])
        if "faceplugin_cos" in enc:
            add("encoder: faceplugin-fr cos(aligned original, reconstruction) (in no loss)", enc["faceplugin_cos"])
        add(f"encoder: PSNR at {enc['resolution']} px (dB)", enc["psnr_db"], digits=2)
        add(f"encoder: SSIM at {enc['resolution']} px", enc["ssim"])
        add("context: SFace cos between two different people's originals", enc["context_sface_cos_other_person"])
        if "context_faceplugin_cos_other_person" in enc:
            add("context: faceplugin-fr cos between two different people's originals",
                enc["context_faceplugin_cos_other_person"])
    ref = S.get("encoder_refined", {})
    if ref.get("status") == "ok":
        tag = f"encoder + {ref['steps']}-step refinement (lr {ref['lr']:g})"
        add(f"{tag}: detected as a face", ref["recon_detection_rate"], pct=True)
        add(f"{tag}: SFace cos(original, reconstruction)", ref["sface_cos"])
        add(f"{tag}: dlib cos(original, reconstruction)", ref["dlib_cos"])
        if "faceplugin_cos" in ref:
            add(f"{tag}: faceplugin-fr cos(original, reconstruction)", ref["faceplugin_cos"])
        add(f"{tag}: PSNR at {ref['resolution']} px (dB)", ref["psnr_db"], digits=2)
        add(f"{tag}: SSIM at {ref['resolution']} px", ref["ssim"])
    mx = S.get("mixing", {})
    if mx.get("status") == "ok":
        L += ["", "Style mixing at psi 0.7: the listed W+ layers of each sample are replaced by another sample's w. "
                  "Bars (issue 3) for the identity band: SFace cos < 0.3 and landmark shift < 5 % of the inter-ocular "
                  "distance.", "",
              "| W+ layers replaced | role | SFace cos(original, mixed) | landmark shift / inter-ocular | "
              "n (cos / shift) | bars met |", "|---|---|---|---|---|---|"]
        seen = set()

        def mrow(layers, role, m, bars=""):
            L.append(f"| {layers} | {role} | {_v(m.get('sface_cos'))} | {_v(m.get('pose_change_iod'), pct=True)} | "
                     f"{m.get('sface_cos', {}).get('n', '')} / {m.get('pose_change_iod', {}).get('n', '')} | {bars} |")

        for name, c in mx["candidates"].items():
            if c.get("status") == "skipped":
                L.append(f"| {name} | candidate identity band: skipped ({_one_line(c['reason'])}) | | | | |")
                continue
            band = " (the method's band)" if name == mx.get("method_identity_band") else ""
            mrow(name, f"candidate identity band{band}", c["middle"],
                 "" if c.get("pass") is None else ("yes" if c["pass"] else "**no**"))
        for name, c in mx["candidates"].items():
            for role in ("coarse", "fine"):
                b = c.get(role, {})
                if "sface_cos" in b and b["layers"] not in seen:
                    seen.add(b["layers"])
                    mrow(b["layers"], f"{role} (context)", b)
        u = mx["context_sface_cos_unrelated_samples"]
        pu = mx.get("context_pose_change_unrelated_samples")
        if pu is None:   # reports written before this row measured the shift
            L.append(f"| all | another sample altogether (reference) | {_v(u)} | | {u['n']} / | |")
        else:
            L.append(f"| all | another sample altogether (reference) | {_v(u)} | {_v(pu, pct=True)} | "
                     f"{u['n']} / {pu['n']} | |")
    skipped = [(k, v) for k, v in S.items() if v.get("status") != "ok"]
    if skipped:
        L += ["", "Not measured:", ""]
        L += [f"- **{k}** ({v['status']}): {_one_line(v['reason'])}" for k, v in skipped]
    L += ["", "Definitions: samples are upscaled bicubically to 256 px before YuNet; landmark shift = mean displacement"
              " of the 5 landmarks in the generator frame / inter-ocular distance; FD-dlib = Fréchet distance of "
              "dlib-resnet embeddings (not an FID; compare rows of equal n); SSIM: " +
          enc.get("ssim_definition", "11x11 Gaussian window, sigma 1.5, per RGB channel") + "."]
    imgs = d.get("images", [])
    if imgs:
        L += [""] + [f"![{p[:-4]}]({p})" for p in imgs]
    return "\n".join(L) + "\n"


def run(args) -> int:
    import cv2
    saved = torch.get_num_threads(), cv2.getNumThreads()
    if getattr(args, "threads", 0):
        torch.set_num_threads(int(args.threads))
        cv2.setNumThreads(int(args.threads))
    try:
        rep = Report(args)
        data = rep.run()
    finally:  # a caller in the same process (tests, notebooks) keeps its own settings
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    print(f"wrote {rep.out / 'model_report.json'} and model_report.md")
    for k, v in data["sections"].items():
        if v.get("status") != "ok":
            print(f"  {k}: {v['status']}: {_one_line(v['reason'])}")
    return 1 if rep.errors else 0


__all__ = ["HELP", "add_arguments", "run", "ssim", "psnr", "frechet_distance", "frechet_from_stats", "pose_change",
           "parse_ranges", "metric", "detect_batch", "Report"]
