"""Data preparation of ``faceanonymixer evaluate``: the data folder (``--data`` or ``FACEANONYMIXER_LFW``), the seeded
choice of people and images, the pair sets (genuine, impostor, stolen key; or an LFW pairs.txt / CSV), and the
detection + alignment of every image (ArcFace-112 and FFHQ crops, cached)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import align
from ..errors import FaceAnonyMixerError
from ..images import list_images, read_image
from ..train.data import LFW_ENV, person_split
from . import protocols

log = logging.getLogger(__name__)

DATA_ENV = LFW_ENV   # FACEANONYMIXER_LFW: the LFW folder holding images/<person>/<images> (as for the trainers)


def data_root(explicit: str | os.PathLike | None = None) -> str:
    """The identity-folder root: ``explicit`` (--data / the config's ``data``), else $FACEANONYMIXER_LFW/images."""
    if explicit:
        return str(explicit)
    env = os.environ.get(DATA_ENV)
    if env:
        return str(Path(env) / "images")
    raise FaceAnonyMixerError(f"no data folder: give --data DIR (identity folders DIR/<person>/<images>, e.g. "
                              f"/path/to/lfw/images) or set the environment variable {DATA_ENV} to the LFW folder "
                              f"that holds images/ (e.g. export {DATA_ENV}=/path/to/lfw)")


def digest(obj) -> str:
    """Short stable hash of a JSON-able object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Dataset:
    root: Path
    people: list[str]                 # person names, sorted
    items: list[str]                  # "person/file" relative paths
    person_of: np.ndarray             # [n_items] index into people


def seeded_rng(seed: int, *labels) -> np.random.Generator:
    """A numpy generator determined by the seed and the labels (independent streams per purpose)."""
    h = hashlib.sha256(("|".join([str(seed)] + [str(x) for x in labels])).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def select_dataset(root, max_people: int, min_images: int, images_per_person: int, seed: int,
                   only: dict[str, list[str]] | None = None, split: str | None = None) -> Dataset:
    """People with >= min_images images, max_people of them drawn with the seed; images_per_person drawn per person.
    ``only``: {person: [files]} restricts the choice (pairs.txt mode). Independent of directory listing order."""
    root = Path(root)
    if not root.is_dir():
        raise FaceAnonyMixerError(f"data folder {root} does not exist: give identity folders <root>/<person>/<images> "
                                  "with --data DIR")
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
        pick = seeded_rng(seed, "people").choice(len(names), size=max_people, replace=False)
        names = sorted(names[i] for i in pick)
    items, person_of = [], []
    for pi, n in enumerate(names):
        files = folders[n]
        if images_per_person and len(files) > images_per_person and only is None:
            idx = sorted(seeded_rng(seed, "images", n).choice(len(files), size=images_per_person, replace=False))
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
            rng = seeded_rng(seed, "impostor")
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
            rng = seeded_rng(seed, "stolen", ds.people[s])
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
    only: dict[str, list[str]] = {}
    out = []
    for p in protocols.read_pairs(path, root):
        a, b = Path(p.a), Path(p.b)
        for q in (a, b):
            only.setdefault(q.parent.name, []).append(q.name)
        out.append((f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}", bool(p.same)))
    return only, out


def prepare(ds: Dataset, resolution: int, cache: Path) -> tuple[np.ndarray, np.ndarray, list, list[str]]:
    """Detect + align every item: (arc112 uint8 [n,112,112,3], ffhq uint8 [n,R,R,3], landmarks, dropped items).
    Cached (keyed by the item list and the resolution)."""
    key = digest({"root": str(ds.root.resolve()), "items": ds.items, "res": resolution})
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
