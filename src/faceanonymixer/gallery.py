"""SQLite gallery of *protected* templates: embeddings and protected PNGs only, never originals or keys.

Guarantees (docs/security.md), enforced inside the database so that they hold for every writer and every
interleaving of processes:

* **one active key per person**: ``people`` has one row per enrolled person naming its key fingerprint and
  matcher; a trigger refuses a template whose fingerprint or matcher differs from the person's row;
* **revoked keys never come back**: ``revocations`` lists (person, fingerprint); a trigger refuses a ``people``
  row that names a revoked fingerprint, for that person or anyone else (a revoked key is a compromised key);
* every change (enrol, revoke, revoke + re-enrol) is one ``BEGIN IMMEDIATE`` transaction: checks and writes see
  the same state, and a crash leaves either the old or the new gallery;
* enrolling the same protected template twice stores it once (``UNIQUE(person, digest)``);
* deleted templates are overwritten on disk (``secure_delete``) and the file is vacuumed after a revocation.

The schema carries its version in ``PRAGMA user_version`` (2). A version-1 gallery (made before these rules) is
migrated on first open, after a backup copy ``<file>.v1-backup`` is written beside it.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import sqlite3
import time
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import FaceAnonyMixerError
from .fileio import shown

SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 30.0                     # how long a writer waits for another process's transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    person TEXT PRIMARY KEY,
    key_fingerprint TEXT NOT NULL,
    matcher TEXT NOT NULL,
    enrolled REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person TEXT NOT NULL REFERENCES people(person),
    key_fingerprint TEXT NOT NULL,
    matcher TEXT NOT NULL,
    embedding BLOB NOT NULL,
    image_png BLOB,
    digest TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE(person, digest)
);
CREATE INDEX IF NOT EXISTS templates_person ON templates(person);
CREATE TABLE IF NOT EXISTS revocations (
    person TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    revoked REAL NOT NULL,
    PRIMARY KEY(person, key_fingerprint)
);
CREATE TRIGGER IF NOT EXISTS people_not_revoked_ins BEFORE INSERT ON people
WHEN EXISTS (SELECT 1 FROM revocations r WHERE r.key_fingerprint = NEW.key_fingerprint)
BEGIN SELECT RAISE(ABORT, 'revoked key'); END;
CREATE TRIGGER IF NOT EXISTS people_not_revoked_upd BEFORE UPDATE ON people
WHEN EXISTS (SELECT 1 FROM revocations r WHERE r.key_fingerprint = NEW.key_fingerprint)
BEGIN SELECT RAISE(ABORT, 'revoked key'); END;
CREATE TRIGGER IF NOT EXISTS templates_one_key BEFORE INSERT ON templates
WHEN NOT EXISTS (SELECT 1 FROM people p WHERE p.person = NEW.person AND p.key_fingerprint = NEW.key_fingerprint
                 AND p.matcher = NEW.matcher)
BEGIN SELECT RAISE(ABORT, 'template key or matcher differs from the person''s active one'); END;
"""

log = logging.getLogger(__name__)
_V1_TABLES = {"templates", "revocations"}
_TABLES = {"people", "templates", "revocations"}
_TRIGGERS = {"people_not_revoked_ins", "people_not_revoked_upd", "templates_one_key"}
MAX_NAME = 200                            # characters in a person id


class GalleryError(FaceAnonyMixerError):
    pass


class RevokedKeyError(GalleryError):
    """The key was revoked for this person: it can never be enrolled for them again."""


class NotEnrolledError(GalleryError):
    pass


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _digest(emb: np.ndarray, png: bytes | None) -> str:
    h = hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
    h.update(png or b"")
    return h.hexdigest()[:32]


class Gallery:
    """``Gallery(path, create=False)``: enrol / templates / revoke / people / check. A context manager.

    ``create``: make a new gallery file when none exists (its folder must exist); otherwise a missing file is an
    error naming it (a mistyped ``--gallery`` must not silently start an empty gallery)."""

    def __init__(self, path, create: bool = False):  # path: SQLite file
        self.path = Path(path)
        where = shown(self.path)
        if not self.path.exists():
            if not create:
                raise GalleryError(f"gallery {where} does not exist. Check --gallery (`faceanonymixer enrol` "
                                   "creates a gallery).")
            if not self.path.parent.is_dir():
                raise GalleryError(f"cannot create gallery {where}: folder {shown(self.path.parent)} does not exist. "
                                   "Create it first or give another --gallery path.")
        elif not self.path.is_file():
            raise GalleryError(f"gallery {where} is not a regular file; give the path of a gallery .db file")
        try:
            self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise GalleryError(f"cannot open gallery {where} ({e}). Check the path and its permissions.") from None
        try:
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA secure_delete=ON")
            self._ensure_schema()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise self._sql_error(e, "open") from None

    # -- housekeeping ----------------------------------------------------------------------------------------
    def _sql_error(self, e: sqlite3.Error, doing: str) -> GalleryError:
        where, msg = shown(self.path), str(e)
        if "locked" in msg or "busy" in msg:
            return GalleryError(f"gallery {where} is locked by another process (waited {BUSY_TIMEOUT_S:.0f} s); "
                                f"nothing was changed. Retry when the other command has finished.")
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            return GalleryError(f"gallery {where} cannot be written (read-only file or folder); nothing was changed. "
                                "Make it and its folder writable, or give another --gallery path.")
        if "not a database" in msg or "malformed" in msg or "file is encrypted" in msg:
            return GalleryError(f"gallery {where} is not a faceanonymixer SQLite gallery or is damaged ({msg}); "
                                "give another --gallery path, or restore it from a backup.")
        return GalleryError(f"gallery {where}: {doing} failed ({msg}); nothing was changed.")

    def _ensure_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not r[0].startswith("sqlite_")}
        foreign = GalleryError(f"{shown(self.path)} is an SQLite database but not a faceanonymixer gallery (schema "
                               f"version {version}, tables {sorted(tables)}); it was not changed. Give another "
                               "--gallery path.")
        if version > SCHEMA_VERSION:
            raise GalleryError(f"gallery {shown(self.path)} has schema version {version}, newer than this "
                               f"faceanonymixer understands ({SCHEMA_VERSION}); upgrade faceanonymixer")
        if version == SCHEMA_VERSION:
            if not _TABLES <= tables:
                raise foreign
            return
        if version == 0 and tables == _V1_TABLES:
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(templates)")}
            if not {"person", "key_fingerprint", "matcher", "embedding", "image_png", "created"} <= cols:
                raise foreign
            self._migrate_v1()
            return
        if version != 0 or tables:
            raise foreign
        self.db.execute("BEGIN IMMEDIATE")   # executescript would commit on its own: statements one by one
        try:
            for stmt in _statements(SCHEMA):
                self.db.execute(stmt)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _migrate_v1(self) -> None:
        """v1 (templates + revocations, no constraints) -> v2. Backup first; a person with templates under several
        keys (possible in v1) keeps the newest key, the older keys are recorded as revoked."""
        backup = self.path.with_name(self.path.name + ".v1-backup")
        if not backup.exists():
            shutil.copy2(self.path, backup)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE templates RENAME TO templates_v1")
            self.db.execute("ALTER TABLE revocations RENAME TO revocations_v1")
            self.db.execute("DROP INDEX IF EXISTS templates_person")
            for stmt in _statements(SCHEMA):
                self.db.execute(stmt)
            self.db.execute("INSERT OR IGNORE INTO revocations(person,key_fingerprint,revoked) "
                            "SELECT person, key_fingerprint, MIN(revoked) FROM revocations_v1 "
                            "GROUP BY person, key_fingerprint")
            rows = self.db.execute("SELECT id, person, key_fingerprint, matcher, embedding, image_png, created "
                                   "FROM templates_v1 ORDER BY id").fetchall()
            newest: dict[str, tuple[str, str]] = {}
            for _, person, fp, m, *_ in rows:
                newest[person] = (fp, m)
            now, active = time.time(), set()
            for person, (fp, m) in newest.items():
                if self.is_revoked(person, fp):
                    log.warning("gallery migration: '%s' had templates under a revoked key; they are dropped "
                                "(backup: %s)", shown(person), shown(backup))
                    continue
                self.db.execute("INSERT INTO people(person,key_fingerprint,matcher,enrolled) VALUES (?,?,?,?)",
                                (person, fp, m, now))
                active.add(person)
            for _, person, fp, m, emb, png, created in rows:
                if person not in active:
                    continue
                if newest[person] != (fp, m):      # an older key (a v1 race): revoke it, keep the newest
                    if not self.is_revoked(person, fp):
                        self.db.execute("INSERT INTO revocations(person,key_fingerprint,revoked) VALUES (?,?,?)",
                                        (person, fp, now))
                        log.warning("gallery migration: '%s' had templates under two keys (a race in older versions);"
                                    " the older key %s is now revoked (backup: %s)", shown(person), fp, shown(backup))
                    continue
                e = np.frombuffer(emb, dtype=np.float32)
                self.db.execute("INSERT OR IGNORE INTO templates(person,key_fingerprint,matcher,embedding,image_png,"
                                "digest,created) VALUES (?,?,?,?,?,?,?)",
                                (person, fp, m, emb, png, _digest(e, png), created))
            self.db.execute("DROP TABLE templates_v1")
            self.db.execute("DROP TABLE revocations_v1")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        log.info("gallery %s migrated to schema v%d (backup of the old file: %s)", shown(self.path),
                 SCHEMA_VERSION, shown(backup))

    def check_writable(self) -> None:
        """Fail now (not after minutes of protection work) when the gallery cannot take a write."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ROLLBACK")
        except sqlite3.DatabaseError as e:
            raise self._sql_error(e, "write check") from None
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            raise GalleryError(f"gallery {shown(self.path)} cannot be written (read-only file or folder); nothing was "
                               "changed. Make it and its folder writable, or give another --gallery path.")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.db.close()

    # -- reads ----------------------------------------------------------------------------------------------
    def active_key(self, person: str) -> tuple[str, str] | None:
        """(key_fingerprint, matcher) of the person's active enrolment, or None."""
        r = self.db.execute("SELECT key_fingerprint, matcher FROM people WHERE person=?", (person,)).fetchone()
        return None if r is None else (r[0], r[1])

    def templates(self, person: str) -> list[tuple[str, str, np.ndarray]]:
        """[(key_fingerprint, matcher, embedding[D])] of a person."""
        rows = self.db.execute("SELECT key_fingerprint, matcher, embedding FROM templates WHERE person=? ORDER BY id",
                               (person,)).fetchall()
        return [(fp, m, np.frombuffer(e, dtype=np.float32).copy()) for fp, m, e in rows]

    def images(self, person: str) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT image_png FROM templates WHERE person=? ORDER BY id",
                                              (person,)).fetchall()]

    def is_revoked(self, person: str, key_fingerprint: str) -> bool:
        return self.db.execute("SELECT 1 FROM revocations WHERE person=? AND key_fingerprint=?",
                               (person, key_fingerprint)).fetchone() is not None

    def people(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT person FROM people ORDER BY person")]

    def precheck_enrol(self, person: str, key_fingerprint: str, matcher: str, replacing: bool = False) -> None:
        """The checks ``enrol`` (or ``revoke`` with a new key, ``replacing``) will make, run before the expensive
        protection work so that a refused command fails in a second. They are repeated inside the transaction."""
        check_person(person)
        if self.is_revoked(person, key_fingerprint):
            raise RevokedKeyError(f"key {key_fingerprint} was revoked for '{shown(person)}' and can never be enrolled "
                                  "for them again. Make a new key with `faceanonymixer keygen --out FILE`.")
        if self.db.execute("SELECT 1 FROM revocations WHERE key_fingerprint=?", (key_fingerprint,)).fetchone():
            raise RevokedKeyError(f"key {key_fingerprint} was revoked (for another person id) and can never be "
                                  "enrolled again. Make a new key with `faceanonymixer keygen --out FILE`.")
        cur = self.active_key(person)
        if cur is None:
            return
        if replacing:
            if cur[0] == key_fingerprint:
                raise GalleryError(f"the new key is the key being revoked ({key_fingerprint}); give another --new-key")
            return
        if cur[0] != key_fingerprint:
            raise GalleryError(f"'{shown(person)}' is already enrolled under another key; run `faceanonymixer revoke "
                               f"{shown(person)}` first")
        if cur[1] != matcher:
            raise GalleryError(f"'{shown(person)}' is enrolled with matcher {cur[1]}, not {matcher}; revoke and re-enrol")

    # -- writes ---------------------------------------------------------------------------------------------
    def _write(self, fn):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            raise self._sql_error(e, "begin") from None
        try:
            out = fn()
            self.db.execute("COMMIT")
            return out
        except sqlite3.IntegrityError as e:
            self.db.execute("ROLLBACK")
            raise GalleryError(f"gallery {shown(self.path)} refused the change ({e}); nothing was changed") from None
        except sqlite3.DatabaseError as e:
            self._rollback()
            raise self._sql_error(e, "write") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self):
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _insert(self, person, key_fingerprint, matcher, emb, images) -> tuple[int, int]:
        if self.active_key(person) is None:
            self.db.execute("INSERT INTO people(person,key_fingerprint,matcher,enrolled) VALUES (?,?,?,?)",
                            (person, key_fingerprint, matcher, time.time()))
        now, added = time.time(), 0
        for i in range(emb.shape[0]):
            png = _png_bytes(images[i]) if images is not None else None
            cur = self.db.execute("INSERT OR IGNORE INTO templates(person,key_fingerprint,matcher,embedding,image_png,"
                                  "digest,created) VALUES (?,?,?,?,?,?,?)",
                                  (person, key_fingerprint, matcher, emb[i].tobytes(), png, _digest(emb[i], png), now))
            added += cur.rowcount
        return added, emb.shape[0] - added

    def enrol(self, person: str, key_fingerprint: str, matcher: str, embeddings: np.ndarray,
              images: list[np.ndarray] | None = None) -> int:
        """Add templates (embeddings[n,D] float32, images n x HxWx3 uint8) in one transaction. Refuses a second
        key for a person (revoke first) and a key revoked for them. Returns the number of new templates (a
        template already stored is not stored twice)."""
        emb = _check_embeddings(embeddings, images)

        def tx():
            self.precheck_enrol(person, key_fingerprint, matcher)
            return self._insert(person, key_fingerprint, matcher, emb, images)[0]
        return self._write(tx)

    def revoke(self, person: str, new_key_fingerprint: str | None = None, matcher: str | None = None,
               embeddings: np.ndarray | None = None, images: list[np.ndarray] | None = None) -> int:
        """Revoke ``person``'s active key: delete its templates and record the fingerprint as revoked. With
        ``new_key_fingerprint`` (+ matcher, embeddings, images) the re-enrolment happens in the same transaction:
        either both happen or neither. Returns the number of templates deleted. Raises NotEnrolledError when the
        person has no active enrolment."""
        emb = _check_embeddings(embeddings, images) if embeddings is not None else None

        def tx():
            cur = self.active_key(person)
            if cur is None:
                raise self.not_enrolled(person)
            if new_key_fingerprint is not None:
                self.precheck_enrol(person, new_key_fingerprint, matcher or cur[1], replacing=True)
            n = self.db.execute("DELETE FROM templates WHERE person=?", (person,)).rowcount
            self.db.execute("DELETE FROM people WHERE person=?", (person,))
            self.db.execute("INSERT OR IGNORE INTO revocations(person,key_fingerprint,revoked) VALUES (?,?,?)",
                            (person, cur[0], time.time()))
            if new_key_fingerprint is not None and emb is not None:
                self._insert(person, new_key_fingerprint, matcher or cur[1], emb, images)
            return n
        n = self._write(tx)
        try:
            self.db.execute("VACUUM")   # deleted pages must not linger in the file
        except sqlite3.DatabaseError:
            pass                        # another reader holds the file: secure_delete already zeroed the rows
        return n

    def not_enrolled(self, person: str) -> NotEnrolledError:
        revoked = self.db.execute("SELECT COUNT(*) FROM revocations WHERE person=?", (person,)).fetchone()[0]
        n = self.db.execute("SELECT COUNT(*) FROM people").fetchone()[0]
        why = ("was already revoked; enrol them under a new key with `faceanonymixer enrol`" if revoked else
               "is not enrolled; check the name (`faceanonymixer gallery list`)")
        return NotEnrolledError(f"'{shown(person)}' {why}. Gallery {shown(self.path)} ({n} person(s) enrolled) "
                                "was not changed.")

    # -- integrity ------------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Every problem found (empty = healthy): SQLite's integrity and foreign-key checks, the one-key and
        revocation invariants, embeddings (size, finite, unit norm), PNGs (decodable) and template digests."""
        problems = [f"sqlite: {r[0]}" for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        present = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type IN ('table','trigger')")}
        problems += [f"schema: {n} is missing (the gallery's rules are not enforced; restore it from a backup)"
                     for n in sorted((_TABLES | _TRIGGERS) - present)]
        problems += [f"template row {r[1]} names a person with no enrolment" for r in
                     self.db.execute("PRAGMA foreign_key_check(templates)")]
        for person, fp in self.db.execute("SELECT p.person, p.key_fingerprint FROM people p JOIN revocations r "
                                          "ON r.person=p.person AND r.key_fingerprint=p.key_fingerprint"):
            problems.append(f"'{shown(person)}' is active under revoked key {fp}")
        for tid, person in self.db.execute("SELECT t.id, t.person FROM templates t JOIN people p ON p.person=t.person "
                                           "WHERE t.key_fingerprint != p.key_fingerprint OR t.matcher != p.matcher"):
            problems.append(f"template {tid} of '{shown(person)}' is under another key or matcher than the person's")
        dims: dict[str, int] = {}
        for tid, person, m, emb, png, dig in self.db.execute(
                "SELECT id, person, matcher, embedding, image_png, digest FROM templates ORDER BY id"):
            e = np.frombuffer(emb, dtype=np.float32) if len(emb) % 4 == 0 else None
            if e is None or e.size == 0 or not np.isfinite(e).all() or abs(float(np.linalg.norm(e)) - 1) > 1e-3:
                problems.append(f"template {tid} of '{shown(person)}': embedding is not a finite unit vector")
                continue
            if dims.setdefault(m, e.size) != e.size:
                problems.append(f"template {tid} of '{shown(person)}': embedding size {e.size}, others of {m} have "
                                f"{dims[m]}")
            if png is not None:
                try:
                    with Image.open(io.BytesIO(png), formats=["PNG"]) as im:
                        im.verify()
                except Exception as ex:  # noqa: BLE001 - any decoder complaint is a finding, not a crash
                    problems.append(f"template {tid} of '{shown(person)}': image is not a valid PNG ({ex})")
            if dig != _digest(e, png):
                problems.append(f"template {tid} of '{shown(person)}': content does not match its digest (altered)")
        return problems

    def stats(self) -> dict:
        q = lambda s: self.db.execute(s).fetchone()[0]  # noqa: E731
        return dict(people=q("SELECT COUNT(*) FROM people"), templates=q("SELECT COUNT(*) FROM templates"),
                    revocations=q("SELECT COUNT(*) FROM revocations"), schema=SCHEMA_VERSION)


def check_person(person: str) -> None:
    """A person id: 1-200 printable characters, no leading or trailing space, Unicode NFC (so that one name has
    one spelling in the gallery)."""
    if not isinstance(person, str) or not person or len(person) > MAX_NAME or not person.isprintable() \
            or person != person.strip() or unicodedata.normalize("NFC", person) != person:
        raise GalleryError(f"person id '{shown(person)}' is not allowed: use 1-{MAX_NAME} printable characters "
                           "without leading or trailing spaces")


def _check_embeddings(embeddings, images) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise GalleryError(f"embeddings must be [n>0, D], got shape {emb.shape}")
    if images is not None and len(images) != emb.shape[0]:
        raise GalleryError(f"{emb.shape[0]} embeddings but {len(images)} images")
    return emb


def _statements(script: str) -> list[str]:
    """Split SCHEMA into statements (triggers hold ';' inside BEGIN ... END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and (not joined.upper().startswith("CREATE TRIGGER") or joined.upper().endswith("END;")):
            out.append(joined)
            buf = []
    return out
