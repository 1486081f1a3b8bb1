"""Protection step of ``faceanonymixer evaluate``: the variants (keyed ones through ``pipeline.Protector``, key-less
transforms), the deterministic evaluation keys, and the on-disk cache of protected images keyed by a hash of
everything that determines them (a re-run resumes, a changed config recomputes)."""
from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import config as cfgmod
from .. import pipeline, registry
from ..errors import FaceAnonyMixerError
from ..keys import Key
from ..tensors import from_uint8, to_uint8
from . import baselines
from .config import ALL_VARIANTS, DEFAULT_VARIANTS, KEYED, KEYLESS, EvalConfig  # noqa: F401 (re-exported)
from .dataset import Dataset, Pairs, digest

log = logging.getLogger(__name__)


def eval_key(seed: int, person: str, role: str):
    """Deterministic evaluation key of ``person`` ('k1' or 'k2'); reproducible, never written to disk."""
    return Key(hashlib.sha256(f"faceanonymixer-eval|{seed}|{person}|{role}".encode()).digest())


# --- the method (adapter over pipeline.Protector) -------------------------------------------------------------
class Method:
    """Adapter over ``pipeline.Protector``: one Protector per layer assignment (sharing the loaded networks);
    protects groups of FFHQ crops (tensors, so no re-detection) with one key per group."""

    def __init__(self, cfg: EvalConfig, models: dict | None = None):
        self.cfg = cfg
        self.models = dict(models or {})   # optional in-memory generator / inverter / id_net / attr_net instances
        self._protectors: dict = {}

    def settings(self, variant: str) -> tuple[str, int, str]:
        """(layer assignment, refinement steps, engine) of a keyed variant."""
        p = self.cfg.protect
        return {"method": (p.mixing.assignment, p.optim.steps, "optimise"),
                "naive": (p.mixing.assignment, 0, "optimise"),
                "method-code": ("code", p.optim.steps, "optimise"),
                "mixer": (p.mixing.assignment, 0, "mixer")}[variant]

    def protector(self, assignment: str | None = None, engine: str = "optimise"):
        assignment = assignment or self.cfg.protect.mixing.assignment
        if (assignment, engine) not in self._protectors:
            pc = replace(self.cfg.protect, mixing=replace(self.cfg.protect.mixing, assignment=assignment),
                         engine=engine)
            shared = dict(self.models)
            if self._protectors:
                first = next(iter(self._protectors.values()))
                shared = dict(generator=first.generator, inverter=first.inverter, id_net=first.id_net,
                              attr_net=first.attr)
            self._protectors[(assignment, engine)] = pipeline.Protector(pc, device=self.cfg.device, **shared)
        return self._protectors[(assignment, engine)]

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
        assignment, steps, engine = self.settings(variant)
        prot = self.protector(assignment, engine)
        people = [[x[j] for j in range(x.shape[0])] for x in groups]
        br = prot.protect_people(people, keys, names=[f"g{i}" for i in range(len(groups))], steps=steps)
        if br.failures or len(br.results) != len(groups):
            raise FaceAnonyMixerError(f"protection failed for {len(br.failures)} item(s): {br.failures[:3]}")
        out = [r.images.detach().float().clamp(-1, 1).cpu() for r in br.results]
        for o, x in zip(out, groups):
            assert o.shape == x.shape, (tuple(o.shape), tuple(x.shape))
        return out

    def plan(self, variant: str):
        return self.protector(*self.settings(variant)[::2]).plan

    def key_code(self, variant: str, key) -> torch.Tensor:
        return self.protector(*self.settings(variant)[::2]).key_code(key)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Inversion + synthesis without protection (the 'reconstruction' control)."""
        p = self.protector()
        return p.synthesise(p.invert(x.to(p.device))).cpu()


# --- caching -------------------------------------------------------------------------------------------
def variant_hash(cfg: EvalConfig, variant: str, resolution: int, model_digests: dict | None = None) -> str:
    """Everything that determines a variant's images (a change recomputes; unrelated fields do not)."""
    spec = {"variant": variant, "resolution": resolution, "data": str(Path(cfg.data).resolve()), "seed": cfg.seed,
            "models_in_memory": model_digests or {}}
    if variant in KEYED or variant == "reconstruction":
        pc = cfgmod.hash_dict(cfg.protect)    # = to_dict, less opt-in fields at their defaults
        if variant == "naive":            # 0 steps whatever optim.steps says: the optimiser settings do not matter
            pc["optim"] = {"steps": 0, "augment_copies": pc["optim"]["augment_copies"],
                           "noise_mode": pc["optim"]["noise_mode"]}
            pc["loss"] = {}
        if variant == "method-code":
            pc["mixing"]["assignment"] = "code"
        if variant == "mixer":            # one pass: the optimiser and its losses play no part
            pc["engine"], pc["optim"], pc["loss"] = "mixer", {"noise_mode": pc["optim"]["noise_mode"]}, {}
            pc["models"]["mixer"] = cfg.protect.models.mixer
        spec["protect"] = pc if variant in KEYED else {"models": pc["models"], "refine": pc["refine"]}
        spec["weights"] = _weights_stamp(cfg)
        if variant in KEYED and cfg.sessions != "joint":   # joint keeps the hash (and caches) of earlier runs
            spec["sessions"] = cfg.sessions
    if variant == "blur":
        spec["sigma"] = cfg.blur_sigma
    if variant == "pixelate":
        spec["block"] = cfg.pixelate_block
    return digest(spec)


def _weights_stamp(cfg: EvalConfig) -> dict:
    out = {}
    for name in (cfg.protect.models.generator, cfg.protect.models.inverter) + \
            ((cfg.protect.models.mixer,) if "mixer" in cfg.variants else ()):
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


# --- protection of all variants -------------------------------------------------------------------------------
def protect_variant(variant: str, cfg: EvalConfig, ds: Dataset, pairs: Pairs, ffhq: torch.Tensor, method: Method | None,
                    cache: ImageCache) -> dict[str, torch.Tensor]:
    """-> {'k1': [n,3,R,R], 'k2': [n,3,R,R], 'stolen': [U,3,R,R] impostor images under victims' keys,
    'stolen_row': [S] row of 'stolen' for each pair of pairs.stolen}."""
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
