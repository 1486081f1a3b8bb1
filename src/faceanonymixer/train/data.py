"""Training data for the embedded models: real photos from identity folders (``<root>/<person>/<images>``)
and from flat folders of unlabelled-identity photos (e.g. UTKFace), FFHQ-aligned by our own detector/aligner to
the training resolution and cached as one uint8 array per source.

People are split deterministically by a hash of their name (``person_split``) so that the evaluation can use
people the models never saw; the split is a pure function of the name, so every tool agrees on it. A flat folder
has no people: its photos are split by a manifest CSV (``file`` and ``split`` columns, e.g. the UTKFace manifest)
or, without one, by the hash of each file's content (``content_split``, the same rule the UTKFace manifest used).

No default data folder: a trainer takes its ``data`` config value, else ``$FACEANONYMIXER_LFW/images``."""
from __future__ import annotations

import csv
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


def expand_path(value: str | None, key: str) -> str | None:
    """A data path from a config: ``$VAR`` / ``${VAR}`` and ``~`` expanded; an unset variable is an error naming
    the key (so a named config can say ``flat_data: $FACEANONYMIXER_UTKFACE``)."""
    if not value:
        return None
    out = os.path.expanduser(os.path.expandvars(str(value)))
    if "$" in out:
        raise ConfigError(f"{key}: {value!r} names an environment variable that is not set; export it or give the "
                          f"folder with --set {key}=/path")
    return out


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


HOLDOUT_FRACTION = 0.1   # content_split: hashes below this are held back (never used by training or val)
FLAT_VAL_FRACTION = 0.3  # content_split: hashes in [HOLDOUT_FRACTION, this) are 'val', the rest 'train'
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def content_split(data: bytes) -> str:
    """'holdout', 'val' or 'train' for a photo's bytes: the first 64 bits of SHA-256 as a fraction of 2^64
    (the rule behind the UTKFace manifest's split column, so both agree on any copy of the data set)."""
    h = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0 ** 64
    return "holdout" if h < HOLDOUT_FRACTION else ("val" if h < FLAT_VAL_FRACTION else "train")


def read_manifest(path: str | Path) -> dict[str, str]:
    """{file name: split} from a manifest CSV with at least the columns ``file`` and ``split``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist: give a CSV with the columns file,split "
                          "(or leave flat_manifest unset to split by content hash)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "split"} <= set(reader.fieldnames):
            raise ConfigError(f"manifest {path}: needs the columns file and split, has {reader.fieldnames}")
        return {row["file"]: row["split"] for row in reader}


def list_flat(root: str | Path, split: str | None = "train", manifest: str | Path | None = None) -> list[Path]:
    """Sorted photos of a flat folder in ``split``: by the manifest when given (only listed files are ever opened;
    listed files that are absent are logged), else by ``content_split``. ``split`` None = every usable photo."""
    root = Path(root)
    if manifest is not None:
        wanted = read_manifest(manifest)
        files = [root / f for f, s in sorted(wanted.items()) if split is None or s == split]
        missing = [f for f in files if not f.is_file()]
        if missing:
            log.warning("%d photos listed in %s are not in %s (e.g. %s)", len(missing), manifest, root,
                        missing[0].name)
        return [f for f in files if f.is_file()]
    out = []
    for f in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        s = content_split(f.read_bytes())
        if s != "holdout" and (split is None or s == split):
            out.append(f)
    return out


def _align_items(items: list[tuple[str, Path]], size: int, desc: str):
    """Detect and FFHQ-align (person, file) items -> (images, persons, files, failed)."""
    imgs, persons, files, failed = [], [], [], []
    it = tqdm(items, desc=desc, mininterval=10) if tqdm is not None else items
    for person, f in it:
        try:
            rgb = read_image(f)
            face = largest_face(rgb, source=str(f))
            imgs.append(align_ffhq(rgb, face.landmarks5, size))
            persons.append(person)
            files.append(f.name)
        except FaceAnonyMixerError as e:
            failed.append((str(f), str(e).splitlines()[0]))
    return imgs, persons, files, failed


def _write_cache(out: Path, imgs, persons, files, failed) -> Path:
    if not imgs:
        raise ConfigError(f"no face was found in any of the {len(failed)} photos for {out.name}; check the folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, images=np.stack(imgs), person=np.array(persons), files=np.array(files))
    tmp.replace(out)
    (out.parent / f"{out.stem}_failed.json").write_text(json.dumps(failed, indent=1))
    log.info("aligned %d images (%d without a usable face) -> %s", len(imgs), len(failed), out)
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
    return _write_cache(out, *_align_items(items, size, f"align {split}@{size}"))


def prepare_aligned_flat(root: str | Path, cache_dir: str | Path, size: int, split: str = "train",
                         manifest: str | Path | None = None, max_images: int | None = None) -> Path:
    """As ``prepare_aligned`` for a flat folder of photos without identities: ``<cache>/<folder>_flat_<split>_<size>.npz``,
    each photo its own 'person' (``flat:<file>``), so identity-based code never pairs two of them."""
    cache_dir = Path(cache_dir)
    out = cache_dir / f"{Path(root).name}_flat_{split}_{size}.npz"
    if out.is_file():
        return out
    if not Path(root).is_dir():
        raise ConfigError(f"flat training data folder {root} does not exist (and there is no cache {out}); "
                          "give a folder of photos with --set flat_data=/path")
    files = list_flat(root, split, manifest)[: max_images or None]
    if not files:
        how = f"the manifest {manifest}" if manifest is not None else "the content-hash split (train.data.content_split)"
        raise ConfigError(f"flat training data folder {root}: no photo of the '{split}' split by {how}; "
                          "check the folder (and the manifest's file names)")
    return _write_cache(out, *_align_items([(f"flat:{f.name}", f) for f in files], size,
                                           f"align {Path(root).name} {split}@{size}"))


def cache_summary(path: str | Path) -> dict:
    """{'images': n aligned, 'failed': n without a usable face} of a cache written by prepare_aligned*."""
    path = Path(path)
    failed = path.parent / f"{path.stem}_failed.json"
    with np.load(path) as z:
        n = int(z["images"].shape[0])
    return {"images": n, "failed": len(json.loads(failed.read_text())) if failed.is_file() else None}


def training_images(data: str | None, cache: str | Path, size: int, flat_data: str | None = None,
                    flat_manifest: str | None = None, max_images: int | None = None,
                    split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The trainers' real photos: the identity folders ``data`` (None = ``$FACEANONYMIXER_LFW/images``; 'none' = no identity folders)
    plus, when given, the flat folder ``flat_data`` (limited to ``flat_manifest``'s ``split`` rows). Returns
    (images uint8 [N,size,size,3], person names [N]); flat photos are named ``flat:<file>``."""
    parts = []
    if data != "none":
        parts.append(load_aligned(prepare_aligned(resolve_data(expand_path(data, "data")), cache, size, split,
                                                  max_images)))
    flat = expand_path(flat_data, "flat_data")
    if flat:
        parts.append(load_aligned(prepare_aligned_flat(flat, cache, size, split,
                                                       expand_path(flat_manifest, "flat_manifest"), max_images)))
    elif flat_manifest:
        raise ConfigError("flat_manifest is set but flat_data is not: give the folder the manifest lists")
    if not parts:
        raise ConfigError("no training data: data is 'none' and flat_data is not set")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    persons = np.concatenate([p[1].astype(str) for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, persons


def load_aligned(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,H,W,3], person names [N]) from a cache written by prepare_aligned."""
    z = np.load(path)
    return z["images"], z["person"]
