"""Verification protocols: lists of image pairs.

* LFW ``pairs.txt``: optional header line (``10 300`` / ``10\\t300``), then ``name i j`` (same person) and
  ``name1 i name2 j`` (different people); images at ``<root>/<name>/<name>_<NNNN>.jpg``.
* CSV with header ``img_a,img_b,same`` (paths relative to ``root``, or to the CSV's folder when no root).
* ``sample_pairs(root, n_genuine, n_impostor, seed)``: deterministic sampling from ``<root>/<person>/<images>``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FaceAnonyMixerError
from ..images import IMAGE_EXTENSIONS


class PairsFileError(FaceAnonyMixerError):
    """A pairs file is missing or malformed, or pairs cannot be sampled."""


@dataclass(frozen=True)
class Pair:
    a: Path        # first image
    b: Path        # second image
    same: bool     # True = genuine (same identity)


def lfw_image_path(root: str | os.PathLike, name: str, number: int | str, ext: str = ".jpg") -> Path:
    return Path(root) / name / f"{name}_{int(number):04d}{ext}"


def read_lfw_pairs(path: str | os.PathLike, root: str | os.PathLike, ext: str = ".jpg") -> list[Pair]:
    """Parse an LFW-style pairs.txt (tab or space separated; header optional; blank and '#' lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found. Pass an LFW pairs.txt or a CSV img_a,img_b,same.")
    pairs: list[Pair] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) == 2 and not pairs and all(x.isdigit() for x in fields):
                continue  # header: "<n_sets> <n_pairs_per_set>"
            try:
                if len(fields) == 3:
                    name, i, j = fields
                    pairs.append(Pair(lfw_image_path(root, name, i, ext), lfw_image_path(root, name, j, ext), True))
                    continue
                if len(fields) == 4:
                    n1, i, n2, j = fields
                    pairs.append(Pair(lfw_image_path(root, n1, i, ext), lfw_image_path(root, n2, j, ext), False))
                    continue
            except ValueError:
                pass
            raise PairsFileError(f"{path}:{lineno}: cannot parse {line.strip()!r}: expected 'name i j' (same "
                                 "person) or 'name1 i name2 j' (different people) with integer image numbers")
    if not pairs:
        raise PairsFileError(f"{path}: no pairs found")
    return pairs


_TRUE = {"1", "true", "yes", "y", "same", "genuine", "t"}
_FALSE = {"0", "false", "no", "n", "different", "impostor", "f"}


def read_pairs_csv(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Pair]:
    """CSV ``img_a,img_b,same`` (header required; ``same`` is 1/0, true/false, yes/no). Relative paths are
    resolved against ``root`` (default: the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found")
    base = Path(root) if root is not None else path.parent
    pairs: list[Pair] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if not {"img_a", "img_b", "same"} <= set(cols):
            raise PairsFileError(f"{path}: expected a header with columns img_a,img_b,same; found {cols}")
        for lineno, row in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            same = row["same"].lower()
            if same not in _TRUE | _FALSE:
                raise PairsFileError(f"{path}:{lineno}: 'same' must be 1/0 (or true/false), got {row['same']!r}")
            a, b = Path(row["img_a"]), Path(row["img_b"])
            pairs.append(Pair(a if a.is_absolute() else base / a, b if b.is_absolute() else base / b, same in _TRUE))
    if not pairs:
        raise PairsFileError(f"{path}: no pairs found")
    return pairs


def write_pairs_csv(pairs: list[Pair], path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write pairs as CSV ``img_a,img_b,same`` (paths relative to ``root`` when inside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        if root is not None:
            try:
                return str(Path(p).relative_to(root))
            except ValueError:
                pass
        return str(p)

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["img_a", "img_b", "same"])
        for p in pairs:
            w.writerow([rel(p.a), rel(p.b), int(p.same)])
    return path


def read_pairs(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Pair]:
    """LFW pairs.txt or CSV, by content (a first line containing 'img_a' means CSV)."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found. Pass an LFW pairs.txt, a CSV img_a,img_b,same, "
                             "or sample:N")
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if "img_a" in first or path.suffix.lower() == ".csv":
        return read_pairs_csv(path, root)
    if root is None:
        raise PairsFileError(f"{path}: an LFW pairs.txt needs --root (the folder holding <name>/<name>_NNNN.jpg)")
    return read_lfw_pairs(path, root)


def identity_folders(root: str | os.PathLike) -> dict[str, list[Path]]:
    """{person: sorted image paths} for every sub-folder of ``root`` holding at least one image (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise PairsFileError(f"{root}: identity folder not found (expected <root>/<person>/<images>)")
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = sorted(q for q in d.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                      and not q.name.startswith("."))
        if imgs:
            out[d.name] = imgs
    return out


def sample_pairs(identity_root: str | os.PathLike, n_genuine: int, n_impostor: int, seed: int = 0) -> list[Pair]:
    """Deterministic pairs from ``<root>/<person>/<images>``: same root listing + seed -> same pairs.

    Genuine: a person drawn uniformly among those with >= 2 images, then two distinct images (so prolific
    people do not dominate); impostor: two distinct people drawn uniformly, one image each. No pair repeats
    (unordered). The result is shuffled, so contiguous folds stay balanced. Genuine and impostor pairs use
    separate random streams: changing n_impostor does not change which genuine pairs are drawn."""
    people = identity_folders(identity_root)
    names = list(people)
    multi = [n for n in names if len(people[n]) >= 2]
    max_gen = sum(len(people[n]) * (len(people[n]) - 1) // 2 for n in multi)
    if n_genuine > max_gen:
        raise PairsFileError(f"{identity_root}: asked for {n_genuine} genuine pairs but only {max_gen} distinct "
                             f"ones exist ({len(multi)} people with 2+ images)")
    if n_impostor > 0 and len(names) < 2:
        raise PairsFileError(f"{identity_root}: impostor pairs need at least 2 people, found {len(names)}")
    rng_g = np.random.default_rng([int(seed), 0])
    rng_i = np.random.default_rng([int(seed), 1])
    rng_s = np.random.default_rng([int(seed), 2])

    def draw(n, one, limit):
        seen, out = set(), []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > limit:
                raise PairsFileError(f"{identity_root}: could not draw {n} distinct pairs; use fewer")
            a, b = one()
            key = (a, b) if a <= b else (b, a)
            if key in seen:
                continue
            seen.add(key)
            out.append((a, b))
        return out

    def one_gen():
        person = people[multi[int(rng_g.integers(len(multi)))]]
        i, j = rng_g.choice(len(person), size=2, replace=False)
        return str(person[int(i)]), str(person[int(j)])

    def one_imp():
        i, j = rng_i.choice(len(names), size=2, replace=False)
        pa, pb = people[names[int(i)]], people[names[int(j)]]
        return str(pa[int(rng_i.integers(len(pa)))]), str(pb[int(rng_i.integers(len(pb)))])

    gen = draw(n_genuine, one_gen, 1000 * max(n_genuine, 1) + 10000) if n_genuine else []
    imp = draw(n_impostor, one_imp, 1000 * max(n_impostor, 1) + 10000) if n_impostor else []
    pairs = [Pair(Path(a), Path(b), True) for a, b in gen] + [Pair(Path(a), Path(b), False) for a, b in imp]
    order = rng_s.permutation(len(pairs))
    return [pairs[int(k)] for k in order]


def limit_pairs(pairs: list[Pair], n: int) -> list[Pair]:
    """At most ``n`` pairs, keeping the genuine/impostor proportion: the first of each class in input order."""
    if n >= len(pairs):
        return list(pairs)
    n_gen_all = sum(p.same for p in pairs)
    k_gen = int(round(n * n_gen_all / len(pairs)))
    k_imp = n - k_gen
    out, g, i = [], 0, 0
    for p in pairs:
        if p.same and g < k_gen:
            out.append(p)
            g += 1
        elif not p.same and i < k_imp:
            out.append(p)
            i += 1
    return out
