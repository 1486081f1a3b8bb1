"""``faceanonymixer evaluate``: protect a data set, score it with several recognisers, write the report.

Flow: select people and images (deterministic, seed) -> detect + align every image once (ArcFace-112 crop for the
unprotected baseline, FFHQ crop at the generator resolution for the method) -> protect every image under the
person's key k1 and a second key k2, and the stolen-key images (impostor t under victim s's key) for each variant
-> embed with every recogniser -> score every pair kind (eval/report.py lists them) -> attacks -> metrics ->
report. Protected images are cached under ``cache_dir/<variant hash>/`` (hash of everything that determines them),
so a re-run resumes and a changed config recomputes. Keys are derived from the seed and the person's name (they
are evaluation keys, never written anywhere).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import config as cfgmod
from ..errors import FaceAnonyMixerError
from . import baselines, report
from ..pipeline import ProtectConfig
from .attacks import ATTACKS, AttackConfig, protected_layers, run_attack

log = logging.getLogger(__name__)

KEYED = ("method", "naive", "method-code")                    # variants that use the Protector
KEYLESS = ("reconstruction", "lowres", "blur", "pixelate")    # deterministic transforms (no key)
ALL_VARIANTS = KEYED + KEYLESS


# --- configuration ---------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    data: str = "../shared/data/lfw/images"   # identity folders <data>/<person>/<images>
    pairs: str | None = None                  # optional LFW pairs.txt (or CSV): genuine/impostor pairs from it
    out: str = "eval_report"                  # output folder (report.md, report.html, metrics.json, scores.csv)
    cache_dir: str | None = None              # protected-image cache (default <out>/cache)
    max_people: int = 100                     # people drawn (seeded) from those with >= min_images images
    min_images: int = 2
    split: str | None = None                  # 'val' = only people held out from training our embedded models
                                              # (train.data.person_split); 'train'; null = all people
    images_per_person: int = 3                # images used per person (seeded choice)
    seed: int = 0                             # pair sampling, people/image choice and evaluation keys
    n_impostor: int = 10000                   # impostor / non-mated pairs (all cross-person pairs if fewer)
    stolen_images: int = 2                    # images of the impostor protected with each victim's key
    recognisers: list[str] = field(default_factory=lambda: ["dlib-resnet", "faceplugin-fr", "sface"])
    variants: list[str] = field(default_factory=lambda: list(ALL_VARIANTS))
    main_variant: str = "method"
    operating_fmr: float = 1e-2               # threshold of the protected system (revocability, stolen key)
    blur_sigma: float = 3.0                   # pixels at the generator resolution
    pixelate_block: int = 8
    protect: ProtectConfig = field(default_factory=ProtectConfig)  # the method (same section as configs/default.yaml);
                                              # 'naive' = the same with 0 steps, 'method-code' = mixing.assignment 'code'
    attacks: AttackConfig = field(default_factory=AttackConfig)
    attack_recogniser: str = "auto"           # white-box net of the 'optimise' attack; auto = the method's loss network
    fid_inception: str | None = None          # Inception-v3 FID weights (official file); None = registry lookup
    sessions: str = "joint"                   # joint: a person's images optimised together (paper); separate: each
                                              # image alone, as enrol/verify protect them in deployment
    people_per_batch: int = 8                 # protection sessions run together in one batched pass
    device: str = "cpu"
    grid_people: int = 4
    threads: int = 0                          # torch threads (0 = leave as is)


def selected_attacks(cfg) -> list[str]:
    """Attacks to run: ``attacks.names`` (an empty list = none), or all of ATTACKS when it is null."""
    return list(ATTACKS) if cfg.attacks.names is None else list(cfg.attacks.names)


def load_config(path=None, overrides=None) -> EvalConfig:
    cfg = cfgmod.load(EvalConfig, path, overrides)
    unknown = [v for v in cfg.variants if v not in ALL_VARIANTS]
    if unknown:
        raise cfgmod.ConfigError(f"unknown variant(s) {unknown}; valid: {list(ALL_VARIANTS)}")
    bad = [a for a in selected_attacks(cfg) if a not in ATTACKS]
    if bad:
        raise cfgmod.ConfigError(f"unknown attack(s) {bad}; valid: {list(ATTACKS)}")
    if cfg.sessions not in ("joint", "separate"):
        raise cfgmod.ConfigError(f"sessions must be 'joint' or 'separate', got '{cfg.sessions}'")
    if cfg.main_variant not in cfg.variants:
        raise cfgmod.ConfigError(f"main_variant '{cfg.main_variant}' is not in variants {cfg.variants}")
    return cfg


# --- data and pairs ----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    root: Path
    people: list[str]                 # person names, sorted
    items: list[str]                  # "person/file" relative paths
    person_of: np.ndarray             # [n_items] index into people


def _rng(seed: int, *labels) -> np.random.Generator:
    h = hashlib.sha256(("|".join([str(seed)] + [str(x) for x in labels])).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def select_dataset(root, max_people: int, min_images: int, images_per_person: int, seed: int,
                   only: dict[str, list[str]] | None = None, split: str | None = None) -> Dataset:
    """People with >= min_images images, max_people of them drawn with the seed; images_per_person drawn per person.
    ``only``: {person: [files]} restricts the choice (pairs.txt mode). Independent of directory listing order."""
    from ..images import list_images
    root = Path(root)
    if not root.is_dir():
        raise FaceAnonyMixerError(f"data folder {root} does not exist: give identity folders <root>/<person>/<images> "
                                  "with --data DIR")
    from ..train.data import person_split
    if split not in (None, "train", "val"):
        raise FaceAnonyMixerError(f"split must be 'train', 'val' or null, got {split!r}")
    folders = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if split is not None and person_split(d.name) != split:
            continue
        files = [f.name for f in list_images(d, allow_empty=True)]
        if only is not None:
            if d.name not in only:
                continue
            files = [f for f in files if f in set(only[d.name])]
        if len(files) >= min_images:
            folders[d.name] = sorted(files)
    if not folders:
        raise FaceAnonyMixerError(f"{root}: no person folder with at least {min_images} images")
    names = sorted(folders)
    if max_people and len(names) > max_people:
        pick = _rng(seed, "people").choice(len(names), size=max_people, replace=False)
        names = sorted(names[i] for i in pick)
    items, person_of = [], []
    for pi, n in enumerate(names):
        files = folders[n]
        if images_per_person and len(files) > images_per_person and only is None:
            idx = sorted(_rng(seed, "images", n).choice(len(files), size=images_per_person, replace=False))
            files = [files[i] for i in idx]
        items += [f"{n}/{f}" for f in files]
        person_of += [pi] * len(files)
    return Dataset(root=root, people=names, items=items, person_of=np.asarray(person_of, dtype=np.int64))


@dataclass
class Pairs:
    genuine: np.ndarray      # [G,2] item indices, same person, a < b
    impostor: np.ndarray     # [I,2] item indices, different people
    stolen: np.ndarray       # [S,2] (victim's item, impostor's item); the impostor's item is protected with the victim's key
    stolen_victim: np.ndarray  # [S] victim person index of each stolen pair


def make_pairs(ds: Dataset, n_impostor: int, stolen_images: int, seed: int,
               genuine: np.ndarray | None = None, impostor: np.ndarray | None = None) -> Pairs:
    """Deterministic pair sets (same seed, same data -> same pairs). Explicit genuine/impostor (pairs.txt) win."""
    po = ds.person_of
    n = len(ds.items)
    if genuine is None:
        genuine = np.array([(a, b) for a in range(n) for b in range(a + 1, n) if po[a] == po[b]], dtype=np.int64)
    if impostor is None:
        # uniform without replacement over all cross-person pairs (a < b), by rejection on an index permutation
        total = n * (n - 1) // 2
        n_cross = total - len(genuine)
        if n_cross <= n_impostor:
            impostor = np.array([(a, b) for a in range(n) for b in range(a + 1, n) if po[a] != po[b]], dtype=np.int64)
        else:
            rng = _rng(seed, "impostor")
            chosen: set = set()
            while len(chosen) < n_impostor:
                a = rng.integers(0, n, size=2 * n_impostor)
                b = rng.integers(0, n, size=2 * n_impostor)
                for x, y in zip(a.tolist(), b.tolist()):
                    if po[x] != po[y]:
                        chosen.add((min(x, y), max(x, y)))
                        if len(chosen) == n_impostor:
                            break
            impostor = np.array(sorted(chosen), dtype=np.int64)
    # stolen key: each victim s gets one impostor person t != s; stolen_images of t's images protected with k_s,
    # each compared with every enrolled image of s
    stolen, victims = [], []
    n_people = len(ds.people)
    if n_people >= 2:
        by_person = [np.flatnonzero(po == p) for p in range(n_people)]
        for s in range(n_people):
            rng = _rng(seed, "stolen", ds.people[s])
            t = int(rng.integers(0, n_people - 1))
            t = t + 1 if t >= s else t
            imgs_t = by_person[t][:max(1, stolen_images)]
            for a in by_person[s]:
                for b in imgs_t:
                    stolen.append((a, b)); victims.append(s)
    return Pairs(genuine=np.asarray(genuine, dtype=np.int64).reshape(-1, 2),
                 impostor=np.asarray(impostor, dtype=np.int64).reshape(-1, 2),
                 stolen=np.asarray(stolen, dtype=np.int64).reshape(-1, 2),
                 stolen_victim=np.asarray(victims, dtype=np.int64))


def read_pairs_file(path, root) -> tuple[dict[str, list[str]], list[tuple[str, str, bool]]]:
    """LFW pairs.txt / CSV -> ({person: [files]}, [(item_a, item_b, same)]) through eval/protocols.py."""
    from . import protocols
    parsed = protocols.read_pairs(path, root) if hasattr(protocols, "read_pairs") else protocols.parse_pairs(path, root)
    only: dict[str, list[str]] = {}
    out = []
    for p in parsed:
        a, b, same = _pair_fields(p)
        a, b = Path(a), Path(b)
        for q in (a, b):
            only.setdefault(q.parent.name, []).append(q.name)
        out.append((f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}", bool(same)))
    return only, out


def _pair_fields(p):
    """Adapter over the pair record of eval/protocols.py: a tuple (a, b, same) or an object with attributes."""
    if isinstance(p, (tuple, list)):
        return p[0], p[1], p[2]
    a = getattr(p, "a", None) or getattr(p, "path_a")
    b = getattr(p, "b", None) or getattr(p, "path_b")
    same = getattr(p, "same", None)
    if same is None:
        same = getattr(p, "label")
    return a, b, same


# --- keys -------------------------------------------------------------------------------------------------
def eval_key(seed: int, person: str, role: str):
    """Deterministic evaluation key of ``person`` ('k1' or 'k2'); reproducible, never written to disk."""
    from ..keys import Key
    return Key(hashlib.sha256(f"faceanonymixer-eval|{seed}|{person}|{role}".encode()).digest())


# --- the method (adapter over pipeline.Protector) -------------------------------------------------------------
class Method:
    """Adapter over ``pipeline.Protector``: one Protector per layer assignment (sharing the loaded networks);
    protects groups of FFHQ crops (tensors, so no re-detection) with one key per group."""

    def __init__(self, cfg: EvalConfig, models: dict | None = None):
        self.cfg = cfg
        self.models = dict(models or {})   # optional in-memory generator / inverter / id_net / attr_net instances
        self._protectors: dict = {}

    def settings(self, variant: str) -> tuple[str, int]:
        """(layer assignment, refinement steps) of a keyed variant."""
        p = self.cfg.protect
        return {"method": (p.mixing.assignment, p.optim.steps), "naive": (p.mixing.assignment, 0),
                "method-code": ("code", p.optim.steps)}[variant]

    def protector(self, assignment: str | None = None):
        from dataclasses import replace
        from .. import pipeline
        assignment = assignment or self.cfg.protect.mixing.assignment
        if assignment not in self._protectors:
            pc = replace(self.cfg.protect, mixing=replace(self.cfg.protect.mixing, assignment=assignment))
            shared = dict(self.models)
            if self._protectors:
                first = next(iter(self._protectors.values()))
                shared = dict(generator=first.generator, inverter=first.inverter, id_net=first.id_net,
                              attr_net=first.attr)
            self._protectors[assignment] = pipeline.Protector(pc, device=self.cfg.device, **shared)
        return self._protectors[assignment]

    @property
    def generator(self):
        return self.protector().generator

    @property
    def inverter(self):
        return self.protector().inverter

    def resolution(self) -> int:
        return int(self.generator.resolution)

    def protect(self, variant: str, groups: list[torch.Tensor], keys: list) -> list[torch.Tensor]:
        """groups: per person x[n,3,R,R] in [-1,1]; keys: one Key per group -> protected images, same shapes."""
        assignment, steps = self.settings(variant)
        prot = self.protector(assignment)
        people = [[x[j] for j in range(x.shape[0])] for x in groups]
        br = prot.protect_people(people, keys, names=[f"g{i}" for i in range(len(groups))], steps=steps)
        if br.failures or len(br.results) != len(groups):
            raise FaceAnonyMixerError(f"protection failed for {len(br.failures)} item(s): {br.failures[:3]}")
        out = [r.images.detach().float().clamp(-1, 1).cpu() for r in br.results]
        for o, x in zip(out, groups):
            assert o.shape == x.shape, (tuple(o.shape), tuple(x.shape))
        return out

    def plan(self, variant: str):
        return self.protector(self.settings(variant)[0]).plan

    def key_code(self, variant: str, key) -> torch.Tensor:
        return self.protector(self.settings(variant)[0]).key_code(key)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Inversion + synthesis without protection (the 'reconstruction' control)."""
        p = self.protector()
        return p.synthesise(p.invert(x.to(p.device))).cpu()


# --- caching -------------------------------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def variant_hash(cfg: EvalConfig, variant: str, resolution: int, model_digests: dict | None = None) -> str:
    """Everything that determines a variant's images (a change recomputes; unrelated fields do not)."""
    spec = {"variant": variant, "resolution": resolution, "data": str(Path(cfg.data).resolve()), "seed": cfg.seed,
            "models_in_memory": model_digests or {}}
    if variant in KEYED or variant == "reconstruction":
        pc = cfgmod.to_dict(cfg.protect)
        if variant == "naive":            # 0 steps whatever optim.steps says: the optimiser settings do not matter
            pc["optim"] = {"steps": 0, "augment_copies": pc["optim"]["augment_copies"],
                           "noise_mode": pc["optim"]["noise_mode"]}
            pc["loss"] = {}
        if variant == "method-code":
            pc["mixing"]["assignment"] = "code"
        spec["protect"] = pc if variant in KEYED else {"models": pc["models"], "refine": pc["refine"]}
        spec["weights"] = _weights_stamp(cfg)
        if variant in KEYED and cfg.sessions != "joint":   # joint keeps the hash (and caches) of earlier runs
            spec["sessions"] = cfg.sessions
    if variant == "blur":
        spec["sigma"] = cfg.blur_sigma
    if variant == "pixelate":
        spec["block"] = cfg.pixelate_block
    return _digest(spec)


def _weights_stamp(cfg: EvalConfig) -> dict:
    from .. import registry
    out = {}
    for name in (cfg.protect.models.generator, cfg.protect.models.inverter):
        try:
            p = registry.locate(name, verify=False) if name in registry.MODELS else Path(name)
            st = p.stat()
            out[name] = [str(p), st.st_size, st.st_mtime_ns]
        except (FaceAnonyMixerError, OSError):
            out[name] = None
    return out


class ImageCache:
    """<dir>/<person>.<role>.npz holding uint8 images [n,R,R,3] and the item names they belong to."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, person: str, role: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in person)
        return self.folder / f"{safe}.{role}.npz"

    def get(self, person: str, role: str, names: list[str]) -> np.ndarray | None:
        p = self._path(person, role)
        if not p.is_file():
            return None
        try:
            z = np.load(p, allow_pickle=False)
            if list(z["names"]) != list(names):
                return None
            return z["images"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, person: str, role: str, names: list[str], images: np.ndarray) -> None:
        p = self._path(person, role)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, names=np.asarray(names), images=images)
        tmp.replace(p)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N,3,R,R] in [-1,1] -> [N,R,R,3] uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """[N,R,R,3] uint8 -> [N,3,R,R] float in [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- preparation ---------------------------------------------------------------------------------------------
def prepare(ds: Dataset, resolution: int, cache: Path) -> tuple[np.ndarray, np.ndarray, list, list[str]]:
    """Detect + align every item: (arc112 uint8 [n,112,112,3], ffhq uint8 [n,R,R,3], landmarks, dropped items).
    Cached (keyed by the item list and the resolution)."""
    from tqdm import tqdm
    from .. import align
    from ..images import read_image
    key = _digest({"root": str(ds.root.resolve()), "items": ds.items, "res": resolution})
    path = cache / f"prep_{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return z["arc"], z["ffhq"], list(z["ok"]), [str(s) for s in z["dropped"]]
    arc = np.zeros((len(ds.items), 112, 112, 3), np.uint8)
    ffhq = np.zeros((len(ds.items), resolution, resolution, 3), np.uint8)
    ok, dropped = [], []
    for i, it in enumerate(tqdm(ds.items, desc="align", unit="img", file=sys.stderr, leave=False)):
        try:
            img = read_image(ds.root / it)
            face = align.largest_face(img, source=str(ds.root / it))
        except FaceAnonyMixerError as e:
            log.warning("%s", e)
            dropped.append(it)
            ok.append(False)
            continue
        arc[i] = align.align_arcface(img, face.landmarks5)
        ffhq[i] = align.align_ffhq(img, face.landmarks5, resolution)
        ok.append(True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, arc=arc, ffhq=ffhq, ok=np.asarray(ok), dropped=np.asarray(dropped, dtype=str))
    return arc, ffhq, ok, dropped


def drop_items(ds: Dataset, keep: list[bool], min_images: int) -> tuple[Dataset, np.ndarray]:
    """Remove items without a face, then people left with fewer than min_images; returns (ds, old index of each)."""
    keep = np.asarray(keep, dtype=bool)
    counts = np.bincount(ds.person_of[keep], minlength=len(ds.people))
    keep &= counts[ds.person_of] >= min_images
    idx = np.flatnonzero(keep)
    people_idx = sorted(set(ds.person_of[idx].tolist()))
    remap = {p: i for i, p in enumerate(people_idx)}
    return Dataset(root=ds.root, people=[ds.people[p] for p in people_idx], items=[ds.items[i] for i in idx],
                   person_of=np.asarray([remap[p] for p in ds.person_of[idx].tolist()], dtype=np.int64)), idx


# --- protection of all variants -------------------------------------------------------------------------------
def protect_variant(variant: str, cfg: EvalConfig, ds: Dataset, pairs: Pairs, ffhq: torch.Tensor, method: Method | None,
                    cache: ImageCache) -> dict[str, torch.Tensor]:
    """-> {'k1': [n,3,R,R], 'k2': [n,3,R,R], 'stolen': [U,3,R,R] impostor images under victims' keys,
    'stolen_row': [S] row of 'stolen' for each pair of pairs.stolen}."""
    from tqdm import tqdm
    n_people = len(ds.people)
    by_person = [np.flatnonzero(ds.person_of == p) for p in range(n_people)]
    if variant in KEYLESS:
        out = None
        cached = [cache.get(ds.people[p], "k1", [ds.items[i] for i in by_person[p]]) for p in range(n_people)]
        if all(c is not None for c in cached):
            out = torch.empty_like(ffhq)
            for p in range(n_people):
                out[by_person[p]] = from_uint8(cached[p])
        else:
            if variant == "reconstruction":
                bs = 32
                out = torch.cat([method.reconstruct(ffhq[s:s + bs]) for s in
                                 tqdm(range(0, len(ffhq), bs), desc="reconstruction", file=sys.stderr, leave=False)])
            elif variant == "lowres":
                out = ffhq.clone()
            elif variant == "blur":
                out = baselines.blur(ffhq, cfg.blur_sigma)
            else:
                out = baselines.pixelate(ffhq, cfg.pixelate_block)
            out = from_uint8(to_uint8(out))  # same quantisation as a saved image
            for p in range(n_people):
                cache.put(ds.people[p], "k1", [ds.items[i] for i in by_person[p]], to_uint8(out[by_person[p]]))
        # keyless: "the impostor under the victim's key" is just the impostor's transformed image
        return {"k1": out, "k2": out, "stolen": out, "stolen_row": pairs.stolen[:, 1].copy()}

    # keyed: jobs = (person index, role, item indices, key, cache tag)
    stolen_items = {}  # victim -> sorted unique impostor items
    for (a, b), s in zip(pairs.stolen.tolist(), pairs.stolen_victim.tolist()):
        stolen_items.setdefault(s, set()).add(b)
    groups = []        # (person, role, items, key): one protection session each
    for p in range(n_people):
        for role in ("k1", "k2"):
            groups.append((p, role, by_person[p].tolist(), eval_key(cfg.seed, ds.people[p], role)))
        if p in stolen_items:
            groups.append((p, "stolen", sorted(stolen_items[p]), eval_key(cfg.seed, ds.people[p], "k1")))
    if cfg.sessions == "separate":   # every image alone, as `verify` protects a probe (augmented copies)
        jobs = [(p, role, [i], k, f"{role}.s{j}") for p, role, items, k in groups for j, i in enumerate(items)]
    else:
        jobs = [(p, role, items, k, role) for p, role, items, k in groups]
    results: dict = {}  # (person, role) -> {item: image}
    todo = []
    for j in jobs:
        p, role, items, _, tag = j
        got = cache.get(ds.people[p], tag, [ds.items[i] for i in items])
        if got is not None:
            results.setdefault((p, role), {}).update(zip(items, from_uint8(got)))
        else:
            todo.append(j)
    bs = max(1, cfg.people_per_batch)
    if todo:
        log.info("%s: protecting %d groups (%d cached, sessions %s)", variant, len(todo), len(jobs) - len(todo),
                 cfg.sessions)
    for s in tqdm(range(0, len(todo), bs), desc=f"protect {variant}", unit="batch", file=sys.stderr):
        chunk = todo[s:s + bs]
        outs = method.protect(variant, [ffhq[items] for _, _, items, _, _ in chunk], [j[3] for j in chunk])
        for (p, role, items, _, tag), o in zip(chunk, outs):
            u8 = to_uint8(o)
            cache.put(ds.people[p], tag, [ds.items[i] for i in items], u8)
            results.setdefault((p, role), {}).update(zip(items, from_uint8(u8)))
    res = {}
    for role in ("k1", "k2"):
        t = torch.empty_like(ffhq)
        for p in range(n_people):
            for i in by_person[p].tolist():
                t[i] = results[(p, role)][i]
        res[role] = t
    # unique stolen-key images (victim, impostor item) and, per stolen pair, its row among them
    rows, imgs, stolen_row = {}, [], []
    for (a, b), s in zip(pairs.stolen.tolist(), pairs.stolen_victim.tolist()):
        if (s, b) not in rows:
            rows[(s, b)] = len(imgs)
            imgs.append(results[(s, "stolen")][b])
        stolen_row.append(rows[(s, b)])
    res["stolen"] = torch.stack(imgs) if imgs else ffhq[:0].clone()
    res["stolen_row"] = np.asarray(stolen_row, dtype=np.int64)
    return res


# --- embedding and scoring ---------------------------------------------------------------------------------
@torch.no_grad()
def embed_ffhq(rec, x: torch.Tensor, bs: int = 64) -> torch.Tensor:
    return torch.cat([rec.embed_ffhq(x[s:s + bs]).float().cpu() for s in range(0, len(x), bs)]) if len(x) else torch.zeros(0, rec.dim)


@torch.no_grad()
def embed_arc(rec, arc_u8: np.ndarray, bs: int = 64) -> torch.Tensor:
    x = torch.from_numpy(arc_u8).permute(0, 3, 1, 2).float().div(255.0)
    return torch.cat([rec.embed(x[s:s + bs]).float().cpu() for s in range(0, len(x), bs)])


def _cos(ea: torch.Tensor, eb: torch.Tensor, ia, ib) -> np.ndarray:
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    if ia.size == 0:
        return np.zeros(0)
    return (ea[ia] * eb[ib]).sum(1).double().numpy()


def score_variant(scores: report.ScoreSet, variant: str, rec: str, ds: Dataset, pairs: Pairs, e_orig, e_k1, e_k2,
                  e_stolen, stolen_row) -> None:
    it = ds.items
    g, i = pairs.genuine, pairs.impostor
    tag = lambda role, idx: [f"{variant}:{role}:{it[k]}" for k in idx]  # noqa: E731
    o = lambda idx: [f"original:{it[k]}" for k in idx]  # noqa: E731
    scores.add(variant, "genuine", rec, tag("k1", g[:, 0]), tag("k1", g[:, 1]), _cos(e_k1, e_k1, g[:, 0], g[:, 1]))
    scores.add(variant, "impostor", rec, tag("k1", i[:, 0]), tag("k1", i[:, 1]), _cos(e_k1, e_k1, i[:, 0], i[:, 1]))
    n = len(it)
    scores.add(variant, "orig_prot_same", rec, o(range(n)), tag("k1", range(n)), _cos(e_orig, e_k1, range(n), range(n)))
    oa = np.concatenate([g[:, 0], g[:, 1]]); pb = np.concatenate([g[:, 1], g[:, 0]])
    scores.add(variant, "orig_prot_other", rec, o(oa), tag("k1", pb), _cos(e_orig, e_k1, oa, pb))
    scores.add(variant, "mated", rec, tag("k1", g[:, 0]), tag("k2", g[:, 1]), _cos(e_k1, e_k2, g[:, 0], g[:, 1]))
    scores.add(variant, "nonmated", rec, tag("k1", i[:, 0]), tag("k2", i[:, 1]), _cos(e_k1, e_k2, i[:, 0], i[:, 1]))
    if len(pairs.stolen):
        st = pairs.stolen
        vic = [ds.people[v] for v in pairs.stolen_victim]
        scores.add(variant, "stolen_key", rec, tag("k1", st[:, 0]),
                   [f"{variant}:key_of={v}:{it[b]}" for v, b in zip(vic, st[:, 1])],
                   _cos(e_k1, e_stolen, st[:, 0], stolen_row))


def score_original(scores: report.ScoreSet, rec: str, ds: Dataset, pairs: Pairs, e_orig) -> None:
    it = ds.items
    o = lambda idx: [f"original:{it[k]}" for k in idx]  # noqa: E731
    g, i = pairs.genuine, pairs.impostor
    scores.add(report.ORIGINAL, "genuine", rec, o(g[:, 0]), o(g[:, 1]), _cos(e_orig, e_orig, g[:, 0], g[:, 1]))
    scores.add(report.ORIGINAL, "impostor", rec, o(i[:, 0]), o(i[:, 1]), _cos(e_orig, e_orig, i[:, 0], i[:, 1]))


# --- quality and attributes -----------------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a[N,D], b[M,D] (numpy only, symmetric sqrt)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T          # sqrt(s1)
    m = r1 @ s2 @ r1
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()  # tr sqrt(s1^1/2 s2 s1^1/2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def fid_status(cfg: EvalConfig) -> dict:
    """FID is only reported with the official Inception-v3 weights AND an Inception implementation; never faked."""
    from .. import registry
    try:
        path = registry.locate("inception-fid", explicit=cfg.fid_inception)
    except FaceAnonyMixerError:
        return {"fid": None, "fid_status": "not computed: the official Inception-v3 FID weights "
                "(pt_inception-2015-12-05-6726825d.pth) are not present (see `faceanonymixer weights`)"}
    return {"fid": None, "fid_status": f"not computed: weights found at {path}, but this package has no "
            "Inception-v3 network implementation yet (no torchvision by policy)"}


def pose_proxies(lm5: np.ndarray) -> np.ndarray:
    """(roll degrees, yaw proxy, pitch proxy) from 5 landmarks [image-left eye, image-right eye, nose, mouth l, r].
    yaw = horizontal nose offset from the eye midpoint / inter-ocular distance; pitch = vertical nose position
    between the eye line and the mouth line (0 = eyes, 1 = mouth)."""
    el, er, nose, ml, mr = (np.asarray(p, np.float64) for p in lm5)
    d = er - el
    iod = max(np.hypot(*d), 1e-6)
    roll = math.degrees(math.atan2(d[1], d[0]))
    u = d / iod                        # along the eye line
    nvec = np.array([-u[1], u[0]])     # perpendicular, pointing down the face
    eye_mid, mouth_mid = (el + er) / 2, (ml + mr) / 2
    yaw = float((nose - eye_mid) @ u / iod)
    em = max(float((mouth_mid - eye_mid) @ nvec), 1e-6)
    pitch = float((nose - eye_mid) @ nvec / em)
    return np.array([roll, yaw, pitch])


def attribute_preservation(orig_u8: np.ndarray, prot: torch.Tensor, upscale: int = 256) -> dict:
    """Head-pose agreement from YuNet landmarks on the original FFHQ crop vs the protected image (both upscaled)."""
    import cv2
    from .. import align
    prot_u8 = to_uint8(prot)
    diffs, found = [], 0
    for a, b in zip(orig_u8, prot_u8):
        fa = align.detect(cv2.resize(a, (upscale, upscale), interpolation=cv2.INTER_CUBIC))
        fb = align.detect(cv2.resize(b, (upscale, upscale), interpolation=cv2.INTER_CUBIC))
        if fa and fb:
            found += 1
            diffs.append(np.abs(pose_proxies(fa[0].landmarks5) - pose_proxies(fb[0].landmarks5)))
    n = len(orig_u8)
    if not diffs:
        return {"n": n, "both_detected": 0}
    d = np.stack(diffs)
    return {"n": n, "both_detected": found, "roll_abs_diff_deg": float(d[:, 0].mean()),
            "yaw_proxy_abs_diff": float(d[:, 1].mean()), "pitch_proxy_abs_diff": float(d[:, 2].mean())}


# --- the command --------------------------------------------------------------------------------------------
HELP = "protect a data set and measure utility, anonymity, revocability, unlinkability, irreversibility, quality"


def add_arguments(p) -> None:
    p.add_argument("--config", default=None, help="YAML config (configs/eval.yaml); fields below override it")
    p.add_argument("--data", help="identity folders <DIR>/<person>/<images> (e.g. LFW images/)")
    p.add_argument("--pairs", help="LFW pairs.txt / CSV protocol (optional)")
    p.add_argument("--out", help="output folder for report.md, report.html, metrics.json, scores.csv")
    p.add_argument("--max-people", type=int, dest="max_people", help="number of people drawn (seeded)")
    p.add_argument("--seed", type=int, help="seed of pair sampling, image choice and evaluation keys")
    p.add_argument("--steps", type=int, help="optimisation steps of the method (protect.optim.steps)")
    p.add_argument("--device", help="torch device (cpu, cuda)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set attacks.steps=50 --set variants=[method,naive]")


def config_from_args(args) -> EvalConfig:
    return load_config(args.config, overrides_from_args(args))


def overrides_from_args(args) -> list[str]:
    overrides = []
    for name, key in (("data", "data"), ("pairs", "pairs"), ("out", "out"), ("max_people", "max_people"),
                      ("seed", "seed"), ("steps", "protect.optim.steps"), ("device", "device")):
        v = getattr(args, name, None)
        if v is not None:
            overrides.append(f"{key}={json.dumps(v) if isinstance(v, str) else v}")
    return overrides + list(args.set or [])


def run(args) -> int:
    cfg = config_from_args(args)
    # the exact, reproducible equivalent of this invocation (written into the report)
    command = "faceanonymixer evaluate" + (f" --config {shlex.quote(args.config)}" if args.config else "") + "".join(
        f" --set {shlex.quote(o)}" for o in overrides_from_args(args))
    evaluate(cfg, command=command)
    return 0


def evaluate(cfg: EvalConfig, command: str = "", models: dict | None = None) -> dict:
    """Run the whole evaluation; returns the metrics dict (also written to <out>/metrics.json).
    ``models``: optional in-memory networks for the Protector (generator=, inverter=, id_net=, attr_net=), e.g. a
    freshly trained generator not yet saved; by default everything is loaded from ``cfg.protect.models``."""
    from tqdm import tqdm
    from .. import fr
    t0 = time.time()
    timings: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.time()
        timings[name] = timings.get(name, 0.0) + now - mark[0]
        mark[0] = now
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    cache_root.mkdir(parents=True, exist_ok=True)
    chash = cfgmod.config_hash(cfg)
    needs_method = any(v in KEYED or v == "reconstruction" for v in cfg.variants)
    method = Method(cfg, models) if needs_method else None
    res = method.resolution() if method is not None else 64

    # data, pairs
    explicit = None
    if cfg.pairs:
        only, plist = read_pairs_file(cfg.pairs, cfg.data)
        ds = select_dataset(cfg.data, 0, 1, 0, cfg.seed, only=only)
        explicit = plist
    else:
        ds = select_dataset(cfg.data, cfg.max_people, cfg.min_images, cfg.images_per_person, cfg.seed,
                            split=cfg.split)
    arc, ffhq_u8, ok, dropped = prepare(ds, res, cache_root)
    ds, idx = drop_items(ds, ok, 1 if cfg.pairs else cfg.min_images)
    arc, ffhq_u8 = arc[idx], ffhq_u8[idx]
    if explicit is not None:
        pos = {it: k for k, it in enumerate(ds.items)}
        keep = [(pos[a], pos[b], s) for a, b, s in explicit if a in pos and b in pos]
        gen = np.array([(min(a, b), max(a, b)) for a, b, s in keep if s], dtype=np.int64)
        imp = np.array([(a, b) for a, b, s in keep if not s], dtype=np.int64)
        pairs = make_pairs(ds, cfg.n_impostor, cfg.stolen_images, cfg.seed, genuine=gen, impostor=imp)
    else:
        pairs = make_pairs(ds, cfg.n_impostor, cfg.stolen_images, cfg.seed)
    if len(pairs.genuine) == 0 or len(pairs.impostor) == 0:
        raise FaceAnonyMixerError(f"{cfg.data}: need at least two people with {cfg.min_images}+ usable images "
                                  f"(got {len(ds.people)} people, {len(ds.items)} images)")
    ffhq = from_uint8(ffhq_u8)
    log.info("evaluate: %d people, %d images (%d dropped: no face), %d genuine / %d impostor / %d stolen-key pairs",
             len(ds.people), len(ds.items), len(dropped), len(pairs.genuine), len(pairs.impostor), len(pairs.stolen))

    lap("prepare")
    # protect
    prot: dict[str, dict[str, torch.Tensor]] = {}
    digests = {}
    if models:
        from ..pipeline import module_digest
        digests = {k: module_digest(m) for k, m in models.items() if isinstance(m, torch.nn.Module)}
    for v in cfg.variants:
        vh = variant_hash(cfg, v, res, digests if (v in KEYED or v == "reconstruction") else None)
        prot[v] = protect_variant(v, cfg, ds, pairs, ffhq, method, ImageCache(cache_root / f"{v}_{vh}"))

    lap("protect")
    # recognisers
    recs = {}
    for name in cfg.recognisers:
        try:
            recs[name] = fr.get_recogniser(name, device=cfg.device)
        except FaceAnonyMixerError as e:
            log.warning("recogniser %s unavailable, skipped: %s", name, e)
    if not recs:
        raise FaceAnonyMixerError("no recogniser could be loaded; run `faceanonymixer weights` to see what is missing")
    # white-box = the network inside the method's losses (and the attacker's network); without the method, any
    # recogniser that the method could use as its loss network
    loss_net = getattr(method.protector().id_net, "name", None) if method is not None else None
    attack_net = (loss_net or "sface") if cfg.attack_recogniser == "auto" else cfg.attack_recogniser
    if loss_net is not None:
        white_box = [n for n in recs if n in (loss_net, attack_net)]
    else:
        white_box = [n for n, r in recs.items() if getattr(r, "white_box", False)]

    scores = report.ScoreSet()
    emb: dict = {}
    bar = tqdm(total=len(recs) * (1 + len(cfg.variants)), desc="embed+score", unit="set", file=sys.stderr)
    for name, rec in recs.items():
        bar.set_postfix_str(f"{name} original")
        e_orig = embed_arc(rec, arc)
        score_original(scores, name, ds, pairs, e_orig)
        emb[(name, report.ORIGINAL)] = e_orig
        bar.update()
        for v in cfg.variants:
            bar.set_postfix_str(f"{name} {v}")
            bar.update()
            e1 = embed_ffhq(rec, prot[v]["k1"])
            e2 = e1 if v in KEYLESS else embed_ffhq(rec, prot[v]["k2"])
            es = e1 if v in KEYLESS else embed_ffhq(rec, prot[v]["stolen"])
            emb[(name, v)] = e1
            score_variant(scores, v, name, ds, pairs, e_orig, e1, e2, es, prot[v]["stolen_row"])
    bar.close()

    lap("embed_score")
    # attacks on the main variant
    attack_names = selected_attacks(cfg) if cfg.main_variant in KEYED else []
    attack_imgs = {}
    for a in attack_names:
        plan = method.plan(cfg.main_variant)
        layers = protected_layers(plan)
        w_key = None
        wb = None
        if a == "optimise":
            w_key = torch.cat([method.key_code(cfg.main_variant, eval_key(cfg.seed, ds.people[p], "k1"))
                               for p in ds.person_of.tolist()])
            wb = fr.get_recogniser(attack_net, device=cfg.device)
        dev = method.generator.latent_avg.device
        x = prot[cfg.main_variant]["k1"].to(dev)
        imgs = []
        bs = max(1, cfg.attacks.batch_size)
        for s in tqdm(range(0, len(x), bs), desc=f"attack {a}", file=sys.stderr):
            imgs.append(run_attack(a, x[s:s + bs], method.generator, method.inverter, layers,
                                   w_key=None if w_key is None else w_key[s:s + bs].to(dev), recogniser=wb,
                                   cfg=cfg.attacks).detach().cpu())
        attack_imgs[a] = torch.cat(imgs)
        for name, rec in recs.items():
            ea = embed_ffhq(rec, attack_imgs[a])
            n = len(ds.items)
            scores.add(cfg.main_variant, f"attack:{a}", name, [f"original:{it}" for it in ds.items],
                       [f"attack:{a}:{cfg.main_variant}:k1:{it}" for it in ds.items],
                       _cos(emb[(name, report.ORIGINAL)], ea, range(n), range(n)))

    lap("attacks")
    # quality (offline proxy: Fréchet distance in independent recognisers' embedding spaces) and attributes
    quality = fid_status(cfg)
    for name in recs:
        if name in white_box:
            continue
        ref = embed_ffhq(recs[name], ffhq).numpy()
        for v in cfg.variants:
            if v == "lowres":
                continue
            quality[f"frechet_embedding_distance[{name}]"] = quality.get(f"frechet_embedding_distance[{name}]", {})
            quality[f"frechet_embedding_distance[{name}]"][v] = frechet_distance(ref, emb[(name, v)].numpy())
    quality["note"] = ("frechet_embedding_distance[R] = Fréchet distance between Gaussians fitted to recogniser R's "
                       "embeddings of the real FFHQ crops and of the variant's images; an offline realism proxy, NOT FID")
    attributes = {}
    for v in cfg.variants:
        if v == "lowres":
            continue
        attributes[v] = attribute_preservation(ffhq_u8, prot[v]["k1"])

    lap("quality_attributes")
    counts = {"people": len(ds.people), "images": len(ds.items), "dropped_no_face": len(dropped),
              "genuine": int(len(pairs.genuine)), "impostor": int(len(pairs.impostor)),
              "mated": int(len(pairs.genuine)), "nonmated": int(len(pairs.impostor)),
              "orig_prot_same": len(ds.items), "orig_prot_other": int(2 * len(pairs.genuine)),
              "stolen_key": int(len(pairs.stolen))}
    variants = [report.ORIGINAL] + list(cfg.variants)
    metrics = report.summarise(scores, list(recs), white_box, variants, cfg.main_variant, cfg.operating_fmr,
                               attack_names, extra={"quality": quality, "attributes": attributes},
                               config_hash=chash, seed=cfg.seed, counts=counts)
    metrics["data"] = {"root": str(cfg.data), "pairs": cfg.pairs, "dropped": dropped}
    metrics["sessions"] = cfg.sessions
    metrics["loss_network"], metrics["attack_network"] = loss_net, attack_net if attack_names else None
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    if method is not None:
        metrics["mixing"] = {v: method.plan(v).describe() for v in cfg.variants if v in KEYED}
    metrics["seconds"] = round(time.time() - t0, 1)

    # grid: original (two images) | key 1 (same two images) | key 2
    grid_rows = []
    main = prot[cfg.main_variant]
    for p in range(min(cfg.grid_people, len(ds.people))):
        its = np.flatnonzero(ds.person_of == p)[:2]
        cells = [ffhq_u8[i] for i in its] + [to_uint8(main["k1"][its[k:k + 1]])[0] for k in range(len(its))] \
            + [to_uint8(main["k2"][its[:1]])[0]]
        if len(its) < 2:
            cells = [cells[0], None, cells[1], None, cells[2]]
        grid_rows.append({"label": ds.people[p][:18], "images": cells})
    notes = [f"{len(dropped)} image(s) dropped (no face found)" if dropped else "every image had a face",
             "protection sessions: " + ("each image protected alone (separate sessions, as enrol/verify do)"
                                        if cfg.sessions == "separate" else
                                        "a person's images optimised jointly under one key (paper)"),
             "thresholds: PSR and attacks use the clean (unprotected) impostor distribution; revocability and "
             "stolen key use the protected system's own impostor distribution at the operating FMR",
             f"TAR@FAR is listed only where n_impostor x FAR >= 1 (n_impostor = {len(pairs.impostor)})"]
    report.write_report(out, metrics, scores, grid_rows,
                        ["original a", "original b", f"{cfg.main_variant} k1 (a)", f"{cfg.main_variant} k1 (b)",
                         f"{cfg.main_variant} k2 (a)"], config=cfgmod.to_dict(cfg), notes=notes, command=command)
    log.info("evaluate: wrote %s (%.0f s; %s)", out, time.time() - t0,
             ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return metrics
