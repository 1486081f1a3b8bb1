"""Training data for the embedded models: real photos from identity folders (``<root>/<person>/<images>``),
FFHQ-aligned by our own detector/aligner to the training resolution and cached as one uint8 array.

People are split deterministically by a hash of their name (``person_split``) so that the evaluation can use
people the models never saw; the split is a pure function of the name, so every tool agrees on it.

No default data folder: a trainer takes its ``data`` config value, else ``$FACEANONYMIXER_LFW/images``."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..align import align_ffhq, largest_face
from ..config import ConfigError
from ..errors import FaceAnonyMixerError
from ..images import read_image

try:  # optional: a progress bar while the cache is built
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2  # share of people held out from training (by name hash)
LFW_ENV = "FACEANONYMIXER_LFW"   # the LFW folder (holding images/<person>/<images>), when no config names the data


def _no_data(what: str) -> str:
    return (f"{what}: give the identity folders <data>/<person>/<images> as the config value `data` "
            f"(e.g. --set data=/path/to/lfw/images) or set the environment variable {LFW_ENV} to the LFW folder "
            f"that holds images/ (e.g. export {LFW_ENV}=/path/to/lfw)")


def resolve_data(data: str | None) -> str:
    """A trainer's training-data root: the config value ``data`` if given, else ``$FACEANONYMIXER_LFW/images``."""
    if data:
        return str(data)
    env = os.environ.get(LFW_ENV)
    if env:
        return str(Path(env) / "images")
    raise ConfigError(_no_data("no training data named"))


def person_split(person: str, val_fraction: float = VAL_FRACTION) -> str:
    """'train' or 'val' for a person (folder) name; stable across machines and runs."""
    h = int.from_bytes(hashlib.sha256(person.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return "val" if h < val_fraction else "train"


def list_people(root: str | Path, split: str | None = None) -> dict[str, list[Path]]:
    """{person: sorted image paths} for identity folders under ``root``; ``split`` filters by person_split."""
    root = Path(root)
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if split is not None and person_split(d.name) != split:
            continue
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"})
        if files:
            out[d.name] = files
    return out


def prepare_aligned(root: str | Path, cache_dir: str | Path, size: int, split: str = "train",
                    max_images: int | None = None) -> Path:
    """Detect, FFHQ-align to ``size`` and cache every image of the split as ``<cache>/<split>_<size>.npz``
    (images uint8 [N,size,size,3], person, files). Images without a face are skipped and counted."""
    cache_dir = Path(cache_dir)
    out = cache_dir / f"{Path(root).name}_{split}_{size}.npz"
    if out.is_file():
        return out
    if not Path(root).is_dir():
        raise ConfigError(_no_data(f"training data folder {root} does not exist (and there is no cache {out})"))
    people = list_people(root, split)
    items = [(p, f) for p, fs in people.items() for f in fs][: max_images or None]
    imgs, persons, files, failed = [], [], [], []
    it = tqdm(items, desc=f"align {split}@{size}", mininterval=10) if tqdm is not None else items
    for person, f in it:
        try:
            rgb = read_image(f)
            face = largest_face(rgb, source=str(f))
            imgs.append(align_ffhq(rgb, face.landmarks5, size))
            persons.append(person)
            files.append(f.name)
        except FaceAnonyMixerError as e:
            failed.append((str(f), str(e).splitlines()[0]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, images=np.stack(imgs), person=np.array(persons), files=np.array(files))
    tmp.replace(out)
    (cache_dir / f"{out.stem}_failed.json").write_text(json.dumps(failed, indent=1))
    log.info("aligned %d images (%d failed) -> %s", len(imgs), len(failed), out)
    return out


def load_aligned(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,H,W,3], person names [N]) from a cache written by prepare_aligned."""
    z = np.load(path)
    return z["images"], z["person"]
