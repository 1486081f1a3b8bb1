"""SQLite gallery of *protected* templates: embeddings and protected PNGs only, never originals or keys.

Each template row stores the person, the key fingerprint it was made under, the matcher (recogniser) name,
the L2-normalised embedding (float32) and the protected image as PNG bytes. Every change is one transaction.
"""
from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import numpy as np

from .errors import FaceAnonyMixerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    matcher TEXT NOT NULL,
    embedding BLOB NOT NULL,
    image_png BLOB,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_person ON templates(person);
CREATE TABLE IF NOT EXISTS revocations (
    person TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    revoked REAL NOT NULL
);
"""


class GalleryError(FaceAnonyMixerError):
    pass


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


class Gallery:
    """``Gallery(path)``: enrol / templates / revoke / people. Use as a context manager or call ``close``."""

    def __init__(self, path):  # path: SQLite file (created if missing)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path))
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"gallery {self.path} is not a faceanonymixer SQLite gallery ({e}); "
                               "give another --gallery path") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.db.close()

    def enrol(self, person: str, key_fingerprint: str, matcher: str, embeddings: np.ndarray,
              images: list[np.ndarray] | None = None) -> int:
        """Add templates (embeddings[n,D] float32, images n x HxWx3 uint8). Refuses a second key for a person
        (revoke first). Returns the number of templates stored."""
        emb = np.asarray(embeddings, dtype=np.float32)
        assert emb.ndim == 2, emb.shape
        cur = self.templates(person)
        if cur and any(fp != key_fingerprint for fp, _, _ in cur):
            raise GalleryError(f"'{person}' is already enrolled under another key; run `faceanonymixer revoke "
                               f"{person}` first")
        if cur and any(m != matcher for _, m, _ in cur):
            raise GalleryError(f"'{person}' is enrolled with another matcher; revoke and re-enrol")
        now = time.time()
        with self.db:
            for i in range(emb.shape[0]):
                png = _png_bytes(images[i]) if images is not None else None
                self.db.execute("INSERT INTO templates(person,key_fingerprint,matcher,embedding,image_png,created) "
                                "VALUES (?,?,?,?,?,?)", (person, key_fingerprint, matcher, emb[i].tobytes(), png, now))
        return emb.shape[0]

    def templates(self, person: str) -> list[tuple[str, str, np.ndarray]]:
        """[(key_fingerprint, matcher, embedding[D])] of a person."""
        rows = self.db.execute("SELECT key_fingerprint, matcher, embedding FROM templates WHERE person=? ORDER BY id",
                               (person,)).fetchall()
        return [(fp, m, np.frombuffer(e, dtype=np.float32).copy()) for fp, m, e in rows]

    def images(self, person: str) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT image_png FROM templates WHERE person=? ORDER BY id",
                                              (person,)).fetchall()]

    def revoke(self, person: str) -> int:
        """Delete every template of ``person`` (recording the revoked fingerprints). Returns how many."""
        fps = {fp for fp, _, _ in self.templates(person)}
        with self.db:
            n = self.db.execute("DELETE FROM templates WHERE person=?", (person,)).rowcount
            for fp in sorted(fps):
                self.db.execute("INSERT INTO revocations(person,key_fingerprint,revoked) VALUES (?,?,?)",
                                (person, fp, time.time()))
        self.db.execute("VACUUM")   # deleted pages must not linger in the file
        return n

    def is_revoked(self, person: str, key_fingerprint: str) -> bool:
        return self.db.execute("SELECT 1 FROM revocations WHERE person=? AND key_fingerprint=?",
                               (person, key_fingerprint)).fetchone() is not None

    def people(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT person FROM templates ORDER BY person")]
