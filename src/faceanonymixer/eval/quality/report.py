"""``faceanonymixer model-report``: measure the embedded generator / encoder against fixed bars.

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
   resolution). Compared: generator samples, DCGAN samples (if its weights are installed), a disjoint real
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import faceanonymixer
from ...errors import FaceAnonyMixerError
from ...fr import get_recogniser
from ...losses import get_attribute_encoder
from ...mixing import make_plan
from ...models.dcgan import load_dcgan
from ...models.encoders import load_inverter
from ...models.io import load_meta
from ...models.loading import load_generator, resolve_path
from ...pipeline import RefineConfig, refine_latents
from ...registry import MODELS, locate
from ...tensors import to_uint8
from ...train.sampling import generate
from ...train.grid import make_grid, save_grid
from ..embeddings import embed_crops, embed_ffhq
from ..metrics import frechet_distance, psnr, ssim
from .generation import PSI, fmt_range, mix, parse_ranges, save_image, seed_ws, style_mixing_grid, synth
from .landmarks import DETECT_SIDE, detect_batch, pose_change
from .markdown import markdown
from . import groups as group_section
from .real_faces import load_real_sets

log = logging.getLogger(__name__)

GRID_SEEDS = list(range(64))
MIX_A_SEEDS = [0, 1, 2, 3]          # style-mixing grid rows (source A)
MIX_B_SEEDS = [4, 5, 6, 7, 8]       # style-mixing grid columns (source B)
BARS = {"detection_rate": (">=", 0.90), "mix_identity_cos": ("<", 0.30), "mix_pose_change": ("<", 0.05),
        "recon_detection_rate": (">=", 0.95), "recon_sface_cos": (">=", 0.50)}
DEFAULT_MIX = "1-6,1-5,1-3,3-7"


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def command_line(args) -> str:
    """The exact command that reproduces this report (every option spelled out)."""
    parts = ["faceanonymixer", "model-report", "--generator", str(args.generator), "--encoder", str(args.encoder)]
    parts += ["--data", str(args.data)] if args.data is not None else []
    parts += ["--n-samples", str(args.n_samples), "--n-real", str(args.n_real),
              "--out", str(args.out), "--seed", str(args.seed), "--mix-layers", str(args.mix_layers)]
    if getattr(args, "refine_steps", 0):
        parts += ["--refine-steps", str(args.refine_steps), "--refine-n", str(args.refine_n)]
        if args.refine_lr is not None:
            parts += ["--refine-lr", str(args.refine_lr)]
    if getattr(args, "device", "cpu") != "cpu":
        parts += ["--device", str(args.device)]
    if getattr(args, "groups", None):
        parts += ["--groups", str(args.groups), "--group-data", str(args.group_data), "--per-group",
                  str(args.per_group)]
        if args.manifest:
            parts += ["--manifest", str(args.manifest)] + (["--split", str(args.split)] if args.split else [])
        if args.groupings:
            parts += ["--groupings", ",".join(args.groupings)]
        if args.only_groups:
            parts += ["--only-groups"]
    return shlex.join(parts)

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
        return get_recogniser(name, device=self.dev if name != "dlib-resnet" else "cpu")

    # --- models ---------------------------------------------------------------------------------------
    def load_models(self):
        models = {}
        a = self.args
        try:
            path = resolve_path(a.generator)
            self.G = load_generator(path, device=self.dev)
            info = dict(path=str(path), resolution=self.G.resolution, num_ws=self.G.num_ws, w_dim=self.G.w_dim,
                        z_dim=self.G.z_dim)
            if path.suffix == ".safetensors":
                info["meta"] = load_meta(path)
            models["generator"] = info
        except FaceAnonyMixerError as e:
            models["generator"] = {"path": None, "reason": str(e)}
        if self.G is not None:
            try:
                self.inv = load_inverter(a.encoder, generator=self.G, device=self.dev)
                epath = locate(a.encoder) if a.encoder in MODELS else Path(a.encoder)
                models["encoder"] = {"path": str(epath)}
            except FaceAnonyMixerError as e:
                models["encoder"] = {"path": None, "reason": str(e)}
        else:
            models["encoder"] = {"path": None, "reason": "not loaded: no generator to decode its codes"}
        self.data["models"] = models

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
                                 "bands": {k: fmt_range(v) for k, v in bands.items()}},
                "images": ["samples_grid.png", "style_mixing.png"]}

    def default_band(self):
        """The pipeline's identity band for this generator (its weights' meta band, else the scaling rule)."""
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
            res = {"layers": fmt_range(layers),
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
        out["method_identity_band"] = fmt_range(range(lo, hi + 1))  # mixing.make_plan for this generator
        return out

    # --- 4. FD-dlib -----------------------------------------------------------------------------------
    def fd(self):
        if self.real_a is None or not self.real_a.files:
            raise Skip(self.data["sections"].get("real_data", {}).get("reason", "no real held-out faces"))
        dlib = self.rec("dlib-resnet")
        ref = embed_crops(dlib, np.stack(self.real_a.arc)).numpy()
        rows = {}

        def row(name, emb, what):
            if len(emb) < 2 or len(ref) < 2:
                rows[name] = metric(None, len(emb), f"need >= 2 embedded faces on each side; {what}")
            else:
                rows[name] = metric(frechet_distance(emb, ref), len(emb), n_reference=len(ref), what=what)

        if self.G is not None:
            det = self.sample_set()["det"]
            row("generator", embed_crops(dlib, det.crops).numpy(),
                f"generator samples psi {PSI} (detected {int(det.found.sum())}/{len(det.found)})")
        else:
            rows["generator"] = metric(None, 0, "no generator")
        try:
            dc = load_dcgan()
            xd = dc.sample(self.args.n_samples, seed=self.args.seed)
            assert xd.ndim == 4 and xd.shape[1] == 3, tuple(xd.shape)
            dd = detect_batch(xd.float().cpu(), crops=True)
            row("dcgan", embed_crops(dlib, dd.crops).numpy(),
                f"DCGAN samples (detected {int(dd.found.sum())}/{len(dd.found)})")
            rows["dcgan"]["detection_rate"] = dd.rate
        except Exception as e:  # noqa: BLE001 - an optional comparison (its weights may be missing): recorded
            rows["dcgan"] = metric(None, 0, f"DCGAN failed: {type(e).__name__}: {e}")
        if self.real_b.files:
            row("real_floor", embed_crops(dlib, np.stack(self.real_b.arc)).numpy(),
                "real set B (held-out people disjoint from A), full-resolution photos")
            xb = self.real_b.ffhq_tensor()
            db = detect_batch(xb, crops=True)
            row("real_at_generator_resolution", embed_crops(dlib, db.crops).numpy(),
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
        pairs = np.concatenate([to_uint8(x[:k])[:, :, :, None], to_uint8(y[:k])[:, :, :, None]], axis=3)
        pairs = pairs.transpose(0, 3, 1, 2, 4).reshape(k * 2, G.resolution, G.resolution, 3)
        save_image(make_grid(pairs, nrow=8 if k >= 4 else 2 * k), self.out / name, max(1, 128 // G.resolution))

    # --- main -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        a = self.args
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
        if not getattr(a, "only_groups", False):
            self.section("real_data", self.load_real)
            self.section("samples", self.samples)
            self.section("detection", self.detection)
            self.section("mixing", self.mixing)
            self.section("fd_dlib", self.fd)
            self.section("encoder", self.encoder)
            if a.refine_steps:
                self.section("encoder_refined", self.refined)
        if getattr(a, "groups", None):
            self.section("groups", lambda: group_section.measure(self, a))
            if self.data["sections"]["groups"]["status"] == "ok":   # groups.<grouping>.<group>.<measure>
                self.data["groups"] = self.data["sections"]["groups"].pop("groups")
        self.data["images"] = sorted(p.name for p in self.out.glob("*.png"))
        write_json(self.data, self.out / "model_report.json")
        md = markdown(self.data)
        if self.data["sections"].get("groups", {}).get("status") == "ok":
            md = md.rstrip() + "\n\n" + group_section.markdown(self.data["sections"]["groups"], self.data["groups"])
        (self.out / "model_report.md").write_text(md)
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


__all__ = ["metric", "Report", "command_line", "DEFAULT_MIX"]
