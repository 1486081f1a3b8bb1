"""Writes the legacy local galleries in tests/data with the code that made them (provenance of the binary fixtures;
run once from a git checkout of faceanonymixer, in any folder: ``python tests/data/make_gallery_fixtures.py OUT``).

* gallery-v1.db: schema v1 (templates + revocations, no rules), written by gallery.py of commit fcc56bb;
* gallery-v2.db: schema v2 (people + templates + revocations, triggers, ``PRAGMA user_version=2``), written by
  gallery.py of commit 4007603, the last local SQLite gallery before the SQLAlchemy one;
* gallery-v2-shared-key.db: schema v2 where two people were enrolled under one key (v2 allowed it).

Fingerprints are those of Key(bytes([i]) * 32); embeddings are seeded random unit vectors [n, 8]; images 8x8.
"""
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
V1, V2 = "fcc56bb", "4007603"
FP = {i: None for i in range(1, 10)}


def old_package(commit: str, where: Path, name: str):
    pkg = where / name
    pkg.mkdir()
    for f in ("__init__.py", "errors.py", "fileio.py", "gallery.py"):
        r = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/faceanonymixer/{f}"],
                           capture_output=True, text=True)
        if f != "__init__.py" and f != "fileio.py" and r.returncode:     # fileio.py came after v1
            raise SystemExit(r.stderr)
        (pkg / f).write_text("" if f == "__init__.py" or r.returncode else r.stdout)
    sys.path.insert(0, str(where))
    return importlib.import_module(f"{name}.gallery")


def fp(i: int) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from faceanonymixer.keys import Key
    return Key(bytes([i]) * 32).fingerprint


def emb(seed: int, n: int) -> np.ndarray:
    e = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def img(seed: int, n: int) -> list:
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        g1 = old_package(V1, Path(tmp), "fam_v1")
        g2 = old_package(V2, Path(tmp), "fam_v2")
        with g1.Gallery(out / "gallery-v1.db") as g:                 # v1: no rules, no dedup
            g.enrol("alice", fp(1), "sface", emb(1, 2), img(1, 2))
            g.enrol("bob", fp(2), "sface", emb(2, 1), img(2, 1))
            g.revoke("bob")
            g.enrol("bob", fp(3), "sface", emb(3, 2), img(3, 2))
            g.enrol("carol", fp(4), "sface", emb(4, 1))             # no image
            g.revoke("carol")
        with g2.Gallery(out / "gallery-v2.db", create=True) as g:
            g.enrol("alice", fp(1), "sface", emb(1, 2), img(1, 2))
            g.enrol("alice", fp(1), "sface", emb(1, 2), img(1, 2))    # stored once
            g.enrol("bob", fp(2), "sface", emb(2, 1), img(2, 1))
            g.revoke("bob", fp(3), "sface", emb(3, 2), img(3, 2))      # revoke + re-enrol in one transaction
            g.enrol("carol", fp(4), "sface", emb(4, 1))              # no image
            g.revoke("carol")
            g.enrol("Zoë", fp(5), "arcface", emb(5, 3), img(5, 3))    # another matcher, a non-ASCII id
        with g2.Gallery(out / "gallery-v2-shared-key.db", create=True) as g:
            g.enrol("ann", fp(6), "sface", emb(6, 1))
            g.enrol("ben", fp(6), "sface", emb(7, 1))                # one key, two people: v2 allowed it
            g.enrol("cid", fp(8), "sface", emb(8, 1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
