"""The gallery of *protected* templates (embeddings and protected PNGs only, never originals or keys), one for the
local commands (``enrol``, ``verify``, ``revoke``, ``gallery``) and the service (``serve``): SQLAlchemy Core over
SQLite (a file path, or ``sqlite:///FILE``) or PostgreSQL (``postgresql://...``, driven by psycopg 3).

Guarantees (docs/security.md), enforced by the database's own constraints so that they hold for every writer:

* **one active key per person**: ``fam_people`` has one row per enrolled person; a template's (person, key,
  matcher) is a foreign key into it, so a template under another key or matcher cannot exist;
* **revoked keys never come back, for anyone**: every key fingerprint ever enrolled has one ``fam_keys`` row
  (``active`` or ``revoked``) naming the person it was enrolled for; a person row references its key's row
  *as active*, so a revoked fingerprint cannot be enrolled again by that person or any other, and a key active
  for one person cannot be taken by another. On SQLite, triggers repeat these rules (and keep a revoked key
  revoked) so that they hold for a writer that did not turn foreign keys on;
* every change (enrol, revoke, revoke + re-enrol) is one transaction that first takes the gallery's write lock
  (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock), so checks and writes see the same
  state and a crash or shutdown leaves the old or the new gallery;
* the same template enrolled twice is stored once (``UNIQUE(person, digest)``);
* SQLite: a new file is made mode 0600, deleted rows are overwritten on disk (``secure_delete``) and the file is
  vacuumed after a revocation.

Schema version: table ``fam_schema`` (one row; SQLite's ``PRAGMA user_version`` says the same, so that an older
faceanonymixer refuses the file as too new). ``MIGRATIONS[i]`` upgrades version i to i+1, each in its own
transaction; opening a gallery at an older version upgrades it, a newer one is refused. A local gallery of the
SQLite-only format (``PRAGMA user_version`` 2, or the unversioned format 1) is carried over into this schema on
first open, in one transaction, after a backup copy ``<file>.v1-backup`` / ``<file>.v2-backup`` is written (an
existing backup is never replaced unless it is a copy of the same file, or ``overwrite_backup``).
API tokens live here too (``fam_tokens``, SHA-256 of the token only: tokens are 256-bit random, so a fast hash is
enough). SQLAlchemy is imported when a gallery is first opened, not with this module.
"""
from __future__ import annotations

import contextlib
import filecmp
import functools
import hashlib
import io
import logging
import os
import secrets
import shutil
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from .errors import FaceAnonyMixerError
from .fileio import shown

SCHEMA_VERSION = 4
# What an API token may do (each role includes the ones before it). Any token may read any person's state: the
# roles limit who can change the gallery, since a token that may enrol can add templates under any fingerprint.
ROLES = ("verify", "enrol", "admin")   # verify: info, verify, status; enrol: + enrol; admin: + revoke
BUSY_TIMEOUT_S = 30.0                     # SQLite: how long a writer waits for another process's transaction
_PG_LOCK = 0x46414D                       # advisory lock id of the gallery's writers ("FAM")
TOKEN_BYTES = 32
MAX_NAME = 200                            # characters in a person id
_TABLES = ("fam_schema", "fam_keys", "fam_people", "fam_templates", "fam_tokens")
_CONSTRAINTS = {"fam_people": ("fam_people_key",), "fam_templates": ("fam_templates_person",)}   # foreign keys

log = logging.getLogger(__name__)


class GalleryError(FaceAnonyMixerError):
    pass


class RevokedKeyError(GalleryError):
    """The key was revoked: it can never be enrolled again, for that person or anyone else."""


class NotEnrolledError(GalleryError):
    pass


class ConflictError(GalleryError):
    """The change contradicts the gallery's state (another key active, the key belongs to someone else)."""


class StoreUnavailable(GalleryError):
    """The database cannot be reached, is locked or cannot be written."""


# -- schema ------------------------------------------------------------------------------------------------------
@functools.cache
def _schema() -> SimpleNamespace:
    """SQLAlchemy and the tables, imported and built on first use (``import faceanonymixer`` stays light)."""
    import sqlalchemy as sa
    from sqlalchemy import (CheckConstraint, Column, Float, ForeignKeyConstraint, Index, Integer, LargeBinary,
                            MetaData, String, Table, Text, UniqueConstraint)
    meta = MetaData()
    token_columns = (lambda: [Column("name", String(100), primary_key=True),
                              Column("token_hash", String(64), nullable=False, unique=True),
                              Column("created", Float, nullable=False)])
    return SimpleNamespace(
        sa=sa, meta=meta,
        schema=Table("fam_schema", meta, Column("version", Integer, nullable=False)),
        keys=Table(
            "fam_keys", meta,
            Column("fingerprint", String(64), primary_key=True),
            Column("person", Text, nullable=False),
            Column("state", String(8), nullable=False),
            Column("created", Float, nullable=False),
            Column("revoked", Float),
            CheckConstraint("state IN ('active', 'revoked')", name="fam_keys_state"),
            UniqueConstraint("fingerprint", "person", "state", name="fam_keys_ref")),
        people=Table(
            "fam_people", meta,
            Column("person", Text, primary_key=True),
            Column("key_fingerprint", String(64), nullable=False, unique=True),
            Column("key_state", String(8), nullable=False, server_default="active"),
            Column("matcher", Text, nullable=False),
            Column("enrolled", Float, nullable=False),
            CheckConstraint("key_state = 'active'", name="fam_people_active"),
            ForeignKeyConstraint(["key_fingerprint", "person", "key_state"],
                                 ["fam_keys.fingerprint", "fam_keys.person", "fam_keys.state"], name="fam_people_key"),
            UniqueConstraint("person", "key_fingerprint", "matcher", name="fam_people_ref")),
        templates=Table(
            "fam_templates", meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("person", Text, nullable=False),
            Column("key_fingerprint", String(64), nullable=False),
            Column("matcher", Text, nullable=False),
            Column("embedding", LargeBinary, nullable=False),
            Column("image_png", LargeBinary),
            Column("digest", String(64), nullable=False),
            Column("created", Float, nullable=False),
            ForeignKeyConstraint(["person", "key_fingerprint", "matcher"],
                                 ["fam_people.person", "fam_people.key_fingerprint", "fam_people.matcher"],
                                 name="fam_templates_person"),
            UniqueConstraint("person", "digest", name="fam_templates_once"),
            Index("fam_templates_by_person", "person")),
        tokens_v2=Table("fam_tokens", MetaData(), *token_columns()),     # as schema v2 made it (no role)
        tokens=Table("fam_tokens", meta, *token_columns(), Column("role", String(8), nullable=False,
                                                                  server_default="admin")))


_ROLE_SQL = "role VARCHAR(8) NOT NULL DEFAULT 'admin' CHECK (role IN ('verify', 'enrol', 'admin'))"
_KEY_ACTIVE = ("WHEN NOT EXISTS (SELECT 1 FROM fam_keys k WHERE k.fingerprint = NEW.key_fingerprint AND "
               "k.person = NEW.person AND k.state = 'active') BEGIN SELECT RAISE(ABORT, 'the key is not active for "
               "this person (revoked, or another person''s)'); END")
_ONE_KEY = ("WHEN NOT EXISTS (SELECT 1 FROM fam_people p WHERE p.person = NEW.person AND p.key_fingerprint = "
            "NEW.key_fingerprint AND p.matcher = NEW.matcher) BEGIN SELECT RAISE(ABORT, 'template key or matcher "
            "differs from the person''s active one'); END")
_STAYS = "WHEN OLD.state = 'revoked' BEGIN SELECT RAISE(ABORT, 'a revoked key stays revoked'); END"
SQLITE_TRIGGERS = {       # name -> SQL; the rules for SQLite writers that run without PRAGMA foreign_keys
    "fam_people_key_ins": f"BEFORE INSERT ON fam_people {_KEY_ACTIVE}",
    "fam_people_key_upd": f"BEFORE UPDATE ON fam_people {_KEY_ACTIVE}",
    "fam_templates_one_key_ins": f"BEFORE INSERT ON fam_templates {_ONE_KEY}",
    "fam_templates_one_key_upd": f"BEFORE UPDATE OF person, key_fingerprint, matcher ON fam_templates {_ONE_KEY}",
    "fam_keys_revoked_upd": f"BEFORE UPDATE ON fam_keys {_STAYS}",
    "fam_keys_revoked_del": f"BEFORE DELETE ON fam_keys {_STAYS}",
}


def _v1(conn):        # the gallery
    S = _schema()
    for t in (S.keys, S.people, S.templates):
        t.create(conn)


def _v2(conn):        # API tokens
    _schema().tokens_v2.create(conn)


def _v3(conn):        # token roles; the tokens made before keep the full rights they had
    conn.exec_driver_sql(f"ALTER TABLE fam_tokens ADD COLUMN {_ROLE_SQL}")


def _v4(conn):        # SQLite: the rules as triggers too (a writer without foreign keys on cannot break them)
    if conn.dialect.name == "sqlite":
        for name, body in SQLITE_TRIGGERS.items():
            conn.exec_driver_sql(f"CREATE TRIGGER {name} {body}")


MIGRATIONS = [_v1, _v2, _v3, _v4]   # MIGRATIONS[i]: version i -> i + 1
assert len(MIGRATIONS) == SCHEMA_VERSION


# -- locations ---------------------------------------------------------------------------------------------------
def engine_url(url: str):
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver, psycopg2, is not a dependency). A URL
    that does not parse is refused without repeating it (it may hold a password); so is an in-memory SQLite
    database (every connection would get its own empty gallery, lost at exit)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url
    try:
        u = make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        raise GalleryError("the database URL is not valid (value not shown: it may hold a password); expected "
                           "sqlite:///FILE or postgresql://USER@HOST/DB") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise GalleryError(f"database URL '{u.render_as_string(hide_password=True)}': only sqlite:///FILE and "
                           "postgresql://... are supported")
    if u.get_backend_name() == "sqlite" and u.database and u.database.startswith("file:"):
        raise GalleryError("SQLite URI file names (file:...) are not supported; use sqlite:///FILE")
    if u.get_backend_name() == "sqlite" and (not u.database or u.database == ":memory:"):
        raise GalleryError(f"database URL '{u.render_as_string(hide_password=True)}' names no file: the gallery "
                           "would live in memory and vanish; use sqlite:///FILE (sqlite:////abs/path for an "
                           "absolute path)")
    if u.get_backend_name() == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise GalleryError(f"database {u.render_as_string(hide_password=True)}: PostgreSQL needs the psycopg "
                               "package (pip install 'faceanonymixer[service]', or 'psycopg[binary]')") from None
    return u


def _is_url(where) -> bool:
    return isinstance(where, str) and "://" in where


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (templates and token hashes are nobody else's business;
    SQLite gives its -wal and -shm files the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:      # made by another process meanwhile: theirs
        pass
    except OSError as e:
        raise GalleryError(f"cannot create gallery {shown(path)} ({e.strerror}); make its folder writable or give "
                           "another path") from None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def png_bytes(image) -> bytes:
    """A protected image as stored: PNG bytes as given, or an HxWx3 uint8 array encoded as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def digest(emb: np.ndarray, png: bytes | None) -> str:
    """A template's content digest (embedding bytes + PNG): duplicates are found and alterations detected by it."""
    h = hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
    h.update(png or b"")
    return h.hexdigest()[:32]


def check_person(person: str) -> None:
    """A person id: 1-200 printable characters, no leading or trailing space, Unicode NFC (so that one name has
    one spelling in the gallery)."""
    if not isinstance(person, str) or not person or len(person) > MAX_NAME or not person.isprintable() \
            or person != person.strip() or unicodedata.normalize("NFC", person) != person:
        raise GalleryError(f"person id '{shown(person)}' is not allowed: use 1-{MAX_NAME} printable characters "
                           "without leading or trailing spaces")


def check_embeddings(embeddings, images) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise GalleryError(f"embeddings must be [n>0, D], got shape {emb.shape}")
    if images is not None and len(images) != emb.shape[0]:
        raise GalleryError(f"{emb.shape[0]} embeddings but {len(images)} images")
    return emb


# -- the gallery -------------------------------------------------------------------------------------------------
class Gallery:
    """``Gallery(where, create=False)``: the gallery; ``close()`` when done (or use it as a context manager).
    Opening creates the schema in a new database, upgrades an older one, carries a local gallery of the old
    SQLite-only format over (backup first) and refuses anything else without changing it."""

    def __init__(self, where,                       # SQLite file path, or URL: sqlite:///FILE, postgresql://USER@HOST/DB
                                                    # (a str with "://" or an engine_url(); a str without is a path)
                 create: bool = False,              # make a missing SQLite file (its folder must exist)
                 migrate: bool = True,              # create / upgrade the schema on open
                 target_version: int = SCHEMA_VERSION,   # upgrade this far (tests make older galleries)
                 overwrite_backup: bool = False,    # a legacy file's migration may replace an existing backup
                 revoke_shared_keys: bool = False):  # a legacy key active for several people: revoke it for all
        try:
            from sqlalchemy.engine import URL
        except ImportError:
            raise GalleryError("the gallery needs SQLAlchemy, a dependency of faceanonymixer: pip install "
                               "'sqlalchemy>=2.0' (or reinstall faceanonymixer)") from None
        if isinstance(where, URL):
            self.url = engine_url(where.render_as_string(hide_password=False))
        elif _is_url(where):
            self.url = engine_url(where)
        else:
            self.url = URL.create("sqlite", database=os.fspath(where))
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.path = Path(self.url.database) if self.sqlite else None
        self.where = shown(self.path) if self.sqlite else self.url.render_as_string(hide_password=True)
        self.overwrite_backup, self.revoke_shared_keys = overwrite_backup, revoke_shared_keys
        if self.sqlite:
            self._open_file(create)
        self.engine = self._engine(wal=True)
        if migrate:
            try:
                self.migrate(target_version)
            except BaseException:
                self.engine.dispose()
                raise

    def _open_file(self, create: bool) -> None:
        p = self.path
        if not p.exists():
            if not create:
                raise GalleryError(f"gallery {self.where} does not exist. Check --gallery (`faceanonymixer enrol` "
                                   "creates a gallery).")
            if not p.parent.is_dir():
                raise GalleryError(f"cannot create gallery {self.where}: folder {shown(p.parent)} does not exist. "
                                   "Create it first or give another path.")
            _create_private(p)
        elif not p.is_file():
            raise GalleryError(f"gallery {self.where} is not a regular file; give the path of a gallery .db file")
        elif p.stat().st_mode & 0o077:
            log.warning("gallery %s can be read by other users (mode %o); `chmod 600` it and its -wal/-shm files",
                        self.where, p.stat().st_mode & 0o777)
        self._classify_and_import()

    def _engine(self, wal: bool):
        from sqlalchemy import create_engine, event
        from sqlalchemy import exc as sa_exc
        kw = {}
        if self.sqlite:
            kw["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        try:
            engine = create_engine(self.url, pool_pre_ping=not self.sqlite, **kw)
        except (sa_exc.ArgumentError, ImportError) as e:
            raise GalleryError(f"database {self.where}: {e}") from None
        if self.sqlite:
            event.listen(engine, "connect", functools.partial(_sqlite_connect, wal=wal))
            event.listen(engine, "begin", _sqlite_begin)
        return engine

    def close(self):
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transactions ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self, write: bool, engine=None):
        """One transaction; a write first takes the gallery's write lock, so the checks inside it and the
        writes see the same state. Database failures become StoreUnavailable / ConflictError messages."""
        from sqlalchemy import exc as sa_exc
        try:
            with (engine or self.engine).connect().execution_options(fam_write=write) as conn:
                with conn.begin():
                    if write and not self.sqlite:
                        conn.execute(_schema().sa.select(_schema().sa.func.pg_advisory_xact_lock(_PG_LOCK)))
                    yield conn
        except sa_exc.IntegrityError as e:
            raise ConflictError(f"the gallery refused the change ({_first_line(e.orig)}); nothing was changed") \
                from None
        except sa_exc.DBAPIError as e:
            raise self._unavailable(_first_line(e.orig)) from None

    def _unavailable(self, msg: str) -> StoreUnavailable:
        if "locked" in msg or "busy" in msg:
            return StoreUnavailable(f"gallery {self.where} is locked by another process (waited "
                                    f"{BUSY_TIMEOUT_S:.0f} s); nothing was changed. Retry when the other command "
                                    "has finished.")
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            return StoreUnavailable(f"gallery {self.where} cannot be written (read-only file or folder) or opened "
                                    f"({msg}); nothing was changed. Make it and its folder writable, or give "
                                    "another path.")
        if "not a database" in msg or "malformed" in msg or "file is encrypted" in msg:
            return StoreUnavailable(f"gallery {self.where} cannot be used ({msg}): not a faceanonymixer gallery or "
                                    "damaged; nothing was changed. Give another path (--gallery, --db) or restore "
                                    "it from a backup.")
        return StoreUnavailable(f"database {self.where} failed ({msg}); nothing was changed")

    def version(self, conn) -> int | None:
        S = _schema()
        if not S.sa.inspect(conn).has_table("fam_schema"):
            return None
        return conn.execute(S.sa.select(S.schema.c.version)).scalar_one_or_none()

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Create the schema in an empty database or upgrade an older one, one version per transaction.
        Returns the version reached."""
        S = _schema()
        with self._tx(write=False) as conn:           # the usual case: up to date, no write lock needed
            v = self.version(conn)
            if v is not None and v > SCHEMA_VERSION:
                raise self._too_new(v)
            if v is not None and v >= target:
                return v
        start, first = None, True
        while True:
            with self._tx(write=True) as conn:
                v = self.version(conn)
                if first:
                    start, first = v, False
                if v is None:
                    ours = [t for t in S.sa.inspect(conn).get_table_names() if t.startswith("fam_")]
                    if ours:
                        raise GalleryError(f"database {self.where} holds tables {ours} but no fam_schema version: "
                                           "not a faceanonymixer service gallery nor a local one; it was not "
                                           "changed")
                    S.schema.create(conn)
                    conn.execute(S.schema.insert().values(version=0))
                    v = 0
                if v > SCHEMA_VERSION:
                    raise self._too_new(v)
                if v >= target:
                    return v
                MIGRATIONS[v](conn)
                conn.execute(S.schema.update().values(version=v + 1))
                if self.sqlite:      # an older faceanonymixer reads this one and refuses the file as too new
                    conn.exec_driver_sql(f"PRAGMA user_version={v + 1}")
                if start:   # an existing gallery, not a new one
                    log.info("gallery %s upgraded from schema v%d to v%d", self.where, v, v + 1)

    def _too_new(self, v: int) -> GalleryError:
        return GalleryError(f"gallery {self.where} has schema version {v}, newer than this faceanonymixer "
                            f"understands ({SCHEMA_VERSION}); upgrade faceanonymixer")

    def ping(self) -> None:
        S = _schema()
        with self._tx(write=False) as conn:
            conn.execute(S.sa.select(S.schema.c.version)).scalar_one()

    def check_writable(self) -> None:
        """Fail now (not after minutes of protection work) when the gallery cannot take a write."""
        with self._tx(write=True):
            pass
        if self.sqlite and (not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK)):
            raise StoreUnavailable(f"gallery {self.where} cannot be written (read-only file or folder); nothing was "
                                   "changed. Make it and its folder writable, or give another path.")

    # -- the local format before this schema ----------------------------------------------------------------
    def _classify_and_import(self) -> None:
        """Before the engine turns WAL on: refuse a foreign SQLite file unchanged, carry a legacy local gallery
        (format 1 or 2) over into this schema."""
        pre = self._engine(wal=False)
        try:
            with self._tx(write=False, engine=pre) as conn:
                kind = _legacy_kind(conn, self.where)
            if kind:
                with self._tx(write=True, engine=pre) as conn:
                    kind = _legacy_kind(conn, self.where)       # again, under the write lock
                    if kind:
                        backup = self._import_legacy(conn, kind)
                if kind:
                    _vacuum(pre)                               # the old tables' pages out of the file
                    log.info("gallery %s carried over from the local format v%d to schema v%d (backup of the old "
                             "file: %s)", self.where, kind, SCHEMA_VERSION, shown(backup))
        finally:
            pre.dispose()

    def _backup(self, kind: int) -> Path:
        backup = self.path.with_name(f"{self.path.name}.v{kind}-backup")
        if backup.exists() or backup.is_symlink():
            if backup.is_file() and filecmp.cmp(self.path, backup, shallow=False):
                return backup                 # a copy of this very file (an interrupted migration): kept
            if not self.overwrite_backup:
                raise GalleryError(f"gallery {self.where} is in the local format v{kind} and must be migrated, but "
                                   f"the backup {shown(backup)} already exists and is not a copy of it; nothing was "
                                   "changed. Move that file away, or run `faceanonymixer gallery migrate "
                                   f"--gallery {shown(self.path)} --overwrite-backup`.")
        tmp = backup.with_name(f".{backup.name}.{os.getpid()}.tmp")
        try:
            shutil.copy2(self.path, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, backup)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise GalleryError(f"gallery {self.where} must be migrated to this version's schema, but its backup "
                               f"{shown(backup)} cannot be written ({e.strerror}); nothing was changed. Make the "
                               "folder writable.") from None
        return backup

    def _import_legacy(self, conn, kind: int) -> Path:
        """Legacy rows -> this schema, in the caller's write transaction. Every check first, then the backup,
        then the writes; a refusal changes nothing."""
        S = _schema()
        data = _read_legacy(conn, kind, self.where, self.revoke_shared_keys)
        backup = self._backup(kind)
        for v in range(SCHEMA_VERSION):
            if v == 0:
                S.schema.create(conn)
            MIGRATIONS[v](conn)
        conn.execute(S.schema.insert().values(version=SCHEMA_VERSION))
        for fp, (person, when) in data.revoked.items():
            conn.execute(S.keys.insert().values(fingerprint=fp, person=person, state="revoked", created=when,
                                                revoked=when))
        for person, (fp, matcher, enrolled) in data.people.items():
            conn.execute(S.keys.insert().values(fingerprint=fp, person=person, state="active", created=enrolled))
            conn.execute(S.people.insert().values(person=person, key_fingerprint=fp, key_state="active",
                                                  matcher=matcher, enrolled=enrolled))
        for person, fp, matcher, emb, png, dig, created in data.templates:
            conn.execute(S.templates.insert().values(person=person, key_fingerprint=fp, matcher=matcher,
                                                     embedding=emb, image_png=png, digest=dig, created=created))
        for t in ("templates", "people", "revocations"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")
        conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
        return backup

    # -- reads ----------------------------------------------------------------------------------------------
    @staticmethod
    def _active(conn, person):
        S = _schema()
        r = conn.execute(S.sa.select(S.people.c.key_fingerprint, S.people.c.matcher, S.people.c.enrolled)
                         .where(S.people.c.person == person)).first()
        return None if r is None else tuple(r)

    @staticmethod
    def _key_state(conn, fp) -> tuple[str | None, str | None]:
        S = _schema()
        r = conn.execute(S.sa.select(S.keys.c.state, S.keys.c.person).where(S.keys.c.fingerprint == fp)).first()
        return (None, None) if r is None else (r[0], r[1])

    @staticmethod
    def _templates(conn, person) -> list[tuple[str, str, np.ndarray]]:
        S = _schema()
        t = S.templates.c
        rows = conn.execute(S.sa.select(t.key_fingerprint, t.matcher, t.embedding).where(t.person == person)
                            .order_by(t.id)).all()
        return [(fp, m, np.frombuffer(e, dtype=np.float32).copy()) for fp, m, e in rows]

    def active_key(self, person: str) -> tuple[str, str] | None:
        """(key_fingerprint, matcher) of the person's active enrolment, or None."""
        with self._tx(write=False) as conn:
            cur = self._active(conn, person)
        return None if cur is None else (cur[0], cur[1])

    def templates(self, person: str) -> list[tuple[str, str, np.ndarray]]:
        """[(key_fingerprint, matcher, embedding[D])] of a person."""
        with self._tx(write=False) as conn:
            return self._templates(conn, person)

    def lookup(self, person: str, key_fingerprint: str) -> tuple[list[tuple[str, str, np.ndarray]], str | None]:
        """What verification needs, in one read: (the person's templates, whose revoked key ``key_fingerprint``
        is: the person's own id, another id, or None when it is not revoked)."""
        with self._tx(write=False) as conn:
            state, owner = self._key_state(conn, key_fingerprint)
            return self._templates(conn, person), (owner if state == "revoked" else None)

    def images(self, person: str) -> list[bytes | None]:
        S = _schema()
        t = S.templates.c
        with self._tx(write=False) as conn:
            return [r[0] for r in conn.execute(S.sa.select(t.image_png).where(t.person == person).order_by(t.id))]

    def is_revoked(self, person: str, key_fingerprint: str) -> bool:
        """Whether ``key_fingerprint`` was revoked (for ``person`` or anyone else: a revoked key is refused for
        every person id)."""
        return self.lookup(person, key_fingerprint)[1] is not None

    def people(self) -> list[str]:
        S = _schema()
        with self._tx(write=False) as conn:
            return list(conn.execute(S.sa.select(S.people.c.person).order_by(S.people.c.person)).scalars())

    def listing(self) -> list[tuple[str, str, str, int]]:
        """[(person, active key fingerprint, matcher, number of templates)] by person id, in one read."""
        S = _schema()
        sa, p, t = S.sa, S.people.c, S.templates.c
        q = (sa.select(p.person, p.key_fingerprint, p.matcher, sa.func.count(t.id))
             .select_from(S.people.outerjoin(S.templates, t.person == p.person))
             .group_by(p.person, p.key_fingerprint, p.matcher).order_by(p.person))
        with self._tx(write=False) as conn:
            return [(a, b, c, int(n)) for a, b, c, n in conn.execute(q)]

    def person(self, person: str) -> dict:
        """What the service tells about a person id: enrolled or not, active key, matcher, template count,
        number of revoked keys."""
        check_person(person)
        S = _schema()
        sa = S.sa
        with self._tx(write=False) as conn:
            act = self._active(conn, person)
            n = conn.execute(sa.select(sa.func.count()).select_from(S.templates)
                             .where(S.templates.c.person == person)).scalar_one()
            nrev = conn.execute(sa.select(sa.func.count()).select_from(S.keys).where(
                S.keys.c.person == person, S.keys.c.state == "revoked")).scalar_one()
        out = dict(person=person, enrolled=act is not None, templates=int(n), revoked_keys=int(nrev))
        if act is not None:
            out.update(key_fingerprint=act[0], matcher=act[1], enrolled_at=act[2])
        return out

    def stats(self) -> dict:
        S = _schema()
        sa = S.sa
        with self._tx(write=False) as conn:
            q = lambda t: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()  # noqa: E731
            return dict(people=q(S.people), templates=q(S.templates),
                        revoked_keys=conn.execute(sa.select(sa.func.count()).select_from(S.keys)
                                                  .where(S.keys.c.state == "revoked")).scalar_one(),
                        schema=self.version(conn))

    # -- checks (also run inside each write transaction) ----------------------------------------------------
    def _precheck(self, conn, person, fp, matcher, replacing=False):
        check_person(person)
        state, owner = self._key_state(conn, fp)
        if state == "revoked":
            whose = f"for '{shown(person)}'" if owner == person else "(for another person id)"
            raise RevokedKeyError(f"key {fp} was revoked {whose} and can never be enrolled again. Make a new key "
                                  "with `faceanonymixer keygen --out FILE`.")
        if state == "active" and owner != person:
            raise ConflictError(f"key {fp} is the active key of another person id; every person needs their own "
                                "key (`faceanonymixer keygen --out FILE`)")
        cur = self._active(conn, person)
        if cur is None:
            return
        if replacing:
            if cur[0] == fp:
                raise ConflictError(f"the new key is the key being revoked ({fp}); give another new key")
            return
        if cur[0] != fp:
            raise ConflictError(f"'{shown(person)}' is already enrolled under another key; revoke it first "
                                f"(`faceanonymixer revoke {shown(person)}`, or `faceanonymixer client revoke "
                                f"{shown(person)}` for a service's gallery)")
        if cur[1] != matcher:
            raise ConflictError(f"'{shown(person)}' is enrolled with matcher {cur[1]}, not {matcher}; revoke and "
                                "re-enrol")

    def _not_enrolled(self, conn, person) -> NotEnrolledError:
        S = _schema()
        revoked = conn.execute(S.sa.select(S.sa.func.count()).select_from(S.keys).where(
            S.keys.c.person == person, S.keys.c.state == "revoked")).scalar_one()
        why = ("was already revoked; enrol them under a new key (`faceanonymixer enrol`)" if revoked else
               "is not enrolled; check the person id (`faceanonymixer gallery list`)")
        return NotEnrolledError(f"'{shown(person)}' {why}. Nothing was changed.")

    def precheck_enrol(self, person: str, key_fingerprint: str, matcher: str) -> None:
        """The checks ``enrol`` will make, run before the expensive work (protection, decoding) so that a refused
        request fails in a second. They are repeated inside the write transaction."""
        with self._tx(write=False) as conn:
            self._precheck(conn, person, key_fingerprint, matcher)

    def precheck_revoke(self, person: str, new_key_fingerprint: str | None, matcher: str) -> tuple[str, str]:
        """The checks ``revoke`` will make (the person is enrolled; the new key, if any, can take over). Returns
        the person's active (key fingerprint, matcher)."""
        with self._tx(write=False) as conn:
            cur = self._active(conn, person)
            if cur is None:
                check_person(person)
                raise self._not_enrolled(conn, person)
            if new_key_fingerprint is not None:
                self._precheck(conn, person, new_key_fingerprint, matcher, replacing=True)
            return cur[0], cur[1]

    # -- writes ---------------------------------------------------------------------------------------------
    def _insert(self, conn, person, fp, matcher, emb, images) -> int:
        S = _schema()
        now = time.time()
        if self._active(conn, person) is None:
            if self._key_state(conn, fp)[0] is None:
                conn.execute(S.keys.insert().values(fingerprint=fp, person=person, state="active", created=now))
            conn.execute(S.people.insert().values(person=person, key_fingerprint=fp, key_state="active",
                                                  matcher=matcher, enrolled=now))
        have = set(conn.execute(S.sa.select(S.templates.c.digest).where(S.templates.c.person == person)).scalars())
        added = 0
        for i in range(emb.shape[0]):
            png = png_bytes(images[i]) if images is not None else None
            d = digest(emb[i], png)
            if d in have:          # stored once (the UNIQUE constraint backs this up)
                continue
            conn.execute(S.templates.insert().values(person=person, key_fingerprint=fp, matcher=matcher,
                                                     embedding=emb[i].tobytes(), image_png=png, digest=d,
                                                     created=now))
            have.add(d)
            added += 1
        return added

    def enrol(self, person: str, key_fingerprint: str, matcher: str, embeddings: np.ndarray,
              images: list | None = None) -> int:
        """Store templates (embeddings[n,D] float32; the n protected images as PNG bytes or HxWx3 uint8 arrays)
        in one transaction after the same checks as ``precheck_enrol``. Returns the number of new templates (a
        template already stored is not stored twice)."""
        emb = check_embeddings(embeddings, images)
        with self._tx(write=True) as conn:
            self._precheck(conn, person, key_fingerprint, matcher)
            return self._insert(conn, person, key_fingerprint, matcher, emb, images)

    def revoke(self, person: str, new_key_fingerprint: str | None = None, matcher: str | None = None,
               embeddings: np.ndarray | None = None, images: list | None = None) -> tuple[str, int, int]:
        """Revoke ``person``'s active key for good; with a new key and its templates, re-enrol in the same
        transaction (both or neither). Returns (revoked fingerprint, templates deleted, templates added). Raises
        NotEnrolledError when the person has no active enrolment."""
        S = _schema()
        emb = check_embeddings(embeddings, images) if embeddings is not None else None
        with self._tx(write=True) as conn:
            cur = self._active(conn, person)
            if cur is None:
                check_person(person)
                raise self._not_enrolled(conn, person)
            if new_key_fingerprint is not None:
                self._precheck(conn, person, new_key_fingerprint, matcher or cur[1], replacing=True)
            n = conn.execute(S.templates.delete().where(S.templates.c.person == person)).rowcount
            conn.execute(S.people.delete().where(S.people.c.person == person))
            conn.execute(S.keys.update().where(S.keys.c.fingerprint == cur[0])
                         .values(state="revoked", revoked=time.time()))
            added = 0
            if new_key_fingerprint is not None and emb is not None:
                added = self._insert(conn, person, new_key_fingerprint, matcher or cur[1], emb, images)
        if self.sqlite:
            _vacuum(self.engine)      # deleted pages must not linger (secure_delete zeroed them already)
        return cur[0], int(n), added

    # -- integrity ------------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Every problem found (empty = healthy): SQLite's integrity and foreign-key checks, the schema's rules
        (tables, constraints, SQLite triggers) present, the one-key and revocation invariants, embeddings (size,
        finite, unit norm), PNGs (decodable) and template digests."""
        S = _schema()
        sa = S.sa
        problems = []
        with self._tx(write=False) as conn:
            if self.sqlite:
                problems += [f"sqlite: {r[0]}" for r in conn.exec_driver_sql("PRAGMA integrity_check") if r[0] != "ok"]
                problems += [f"{r[0]} row {r[1]} references a missing {r[2]} row" for r in
                             conn.exec_driver_sql("PRAGMA foreign_key_check")]
            insp = sa.inspect(conn)
            present = set(insp.get_table_names())
            missing = [t for t in _TABLES if t not in present]
            for table, names in _CONSTRAINTS.items():
                if table in present:
                    have = {fk.get("name") for fk in insp.get_foreign_keys(table)}
                    missing += [n for n in names if n not in have]
            if self.sqlite:
                have = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='trigger'")}
                missing += [n for n in SQLITE_TRIGGERS if n not in have]
            problems += [f"schema: {n} is missing (the gallery's rules are not enforced; restore it from a backup)"
                         for n in missing]
            if {"fam_keys", "fam_people", "fam_templates"} - present:
                return problems
            p, k, t = S.people.c, S.keys.c, S.templates.c
            for person, fp in conn.execute(sa.select(p.person, p.key_fingerprint).select_from(
                    S.people.outerjoin(S.keys, k.fingerprint == p.key_fingerprint)).where(
                    sa.or_(k.state.is_(None), k.state != "active", k.person != p.person))):
                problems.append(f"'{shown(person)}' is active under key {fp}, which is not their active key "
                                "(revoked or another person's)")
            for tid, person in conn.execute(sa.select(t.id, t.person).select_from(
                    S.templates.outerjoin(S.people, p.person == t.person)).where(
                    sa.or_(p.person.is_(None), t.key_fingerprint != p.key_fingerprint, t.matcher != p.matcher))):
                problems.append(f"template {tid} of '{shown(person)}' is under another key or matcher than the "
                                "person's (or the person has no enrolment)")
            dims: dict[str, int] = {}
            for tid, person, m, emb, png, dig in conn.execute(
                    sa.select(t.id, t.person, t.matcher, t.embedding, t.image_png, t.digest).order_by(t.id)):
                e = np.frombuffer(emb, dtype=np.float32) if len(emb) % 4 == 0 else None
                if e is None or e.size == 0 or not np.isfinite(e).all() or abs(float(np.linalg.norm(e)) - 1) > 1e-3:
                    problems.append(f"template {tid} of '{shown(person)}': embedding is not a finite unit vector")
                    continue
                if dims.setdefault(m, e.size) != e.size:
                    problems.append(f"template {tid} of '{shown(person)}': embedding size {e.size}, others of {m} "
                                    f"have {dims[m]}")
                if png is not None:
                    try:
                        with Image.open(io.BytesIO(png), formats=["PNG"]) as im:
                            im.verify()
                    except Exception as ex:  # noqa: BLE001 - any decoder complaint is a finding, not a crash
                        problems.append(f"template {tid} of '{shown(person)}': image is not a valid PNG ({ex})")
                if dig != digest(e, png):
                    problems.append(f"template {tid} of '{shown(person)}': content does not match its digest "
                                    "(altered)")
        return problems

    # -- API tokens -----------------------------------------------------------------------------------------
    def add_token(self, name: str, role: str = "verify") -> str:
        """A new random token for client ``name`` with ``role`` (ROLES: verify, enrol, admin); only its hash is
        stored. Returns the token (show it once)."""
        S = _schema()
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable() or name != name.strip():
            raise GalleryError(f"token name '{shown(name)}' is not allowed: 1-100 printable characters")
        if role not in ROLES:
            raise GalleryError(f"token role '{shown(role)}' is not one of {', '.join(ROLES)}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._tx(write=True) as conn:
            if conn.execute(S.sa.select(S.tokens.c.name).where(S.tokens.c.name == name)).first():
                raise ConflictError(f"a token named '{shown(name)}' exists; remove it first "
                                    f"(`faceanonymixer serve token remove {shown(name)}`)")
            conn.execute(S.tokens.insert().values(name=name, token_hash=hash_token(token), created=time.time(),
                                                  role=role))
        return token

    def remove_token(self, name: str) -> None:
        S = _schema()
        with self._tx(write=True) as conn:
            if conn.execute(S.tokens.delete().where(S.tokens.c.name == name)).rowcount == 0:
                raise GalleryError(f"no token named '{shown(name)}' (`faceanonymixer serve token list`)")

    def tokens(self) -> list[tuple[str, float, str]]:
        """[(name, created, role)] by name."""
        S = _schema()
        c = S.tokens.c
        with self._tx(write=False) as conn:
            return [(n, t, r) for n, t, r in conn.execute(S.sa.select(c.name, c.created, c.role).order_by(c.name))]

    def token_client(self, token: str) -> tuple[str, str] | None:
        """(client name, role) of a presented token, or None."""
        S = _schema()
        h = hash_token(token)
        with self._tx(write=False) as conn:
            r = conn.execute(S.sa.select(S.tokens.c.name, S.tokens.c.role).where(S.tokens.c.token_hash == h)).first()
        return None if r is None else (r[0], r[1])


# -- helpers -----------------------------------------------------------------------------------------------------
def _first_line(e) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _sqlite_connect(dbapi_conn, _record, wal: bool = True):
    import sqlite3
    dbapi_conn.isolation_level = None          # we issue BEGIN ourselves (_sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")      # the one-key / revoked-key rules are foreign keys
    cur.execute("PRAGMA secure_delete=ON")     # deleted templates are overwritten on disk
    if wal:
        try:
            cur.execute("PRAGMA journal_mode=WAL")     # readers are not blocked by a writer
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e):       # a read-only gallery is still readable
                raise
    cur.close()


def _vacuum(engine) -> None:
    """Rewrite the SQLite file without free pages and empty its WAL; best effort (a reader in another process
    may hold the file: secure_delete has zeroed the deleted rows anyway)."""
    import sqlite3
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("VACUUM")                      # outside any transaction
        raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as e:
        log.debug("VACUUM skipped (%s)", e)
    finally:
        raw.close()


def _sqlite_begin(conn):
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("fam_write") else "BEGIN")


_V1_COLUMNS = {"person", "key_fingerprint", "matcher", "embedding", "image_png", "created"}


def _legacy_kind(conn, where: str) -> int | None:
    """1 or 2 for a local gallery of the SQLite-only formats, None for this schema or an empty file; a file that
    is neither is refused (not changed)."""
    tables = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
              if not r[0].startswith("sqlite_")}
    version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    if "fam_schema" in tables or (not tables and version == 0):
        return None
    cols = lambda t: {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({t})")}  # noqa: E731
    if version == 2 and tables == {"people", "templates", "revocations"} and _V1_COLUMNS | {"digest"} <= \
            cols("templates") and {"person", "key_fingerprint", "matcher", "enrolled"} <= cols("people"):
        return 2
    if version == 0 and tables == {"templates", "revocations"} and _V1_COLUMNS <= cols("templates"):
        return 1
    if version == 0 and tables and all(t.startswith("fam_") for t in tables):
        return None                    # fam_ tables without a version: migrate() names them
    raise GalleryError(f"{where} is an SQLite database but not a faceanonymixer gallery (schema version {version}, "
                       f"tables {sorted(tables)}); it was not changed. Give another path.")


def _read_legacy(conn, kind: int, where: str, revoke_shared: bool = False) -> SimpleNamespace:
    """The legacy gallery's content in this schema's terms: revoked {fp: (first person, time)}, people {person:
    (fp, matcher, enrolled)}, templates [(person, fp, matcher, embedding, png, digest, created)]. Format 1 had no
    rules: a person left under several keys by a race keeps the newest, the older ones are revoked; a person whose
    newest key is revoked is dropped (both logged). One key active for several people (format 2 allowed it) cannot
    be carried over: refused, nothing changed; with ``revoke_shared`` it is revoked for all of them."""
    now = time.time()
    revoked: dict[str, tuple[str, float]] = {}
    for person, fp, when in conn.exec_driver_sql("SELECT person, key_fingerprint, revoked FROM revocations "
                                                 "ORDER BY revoked"):
        revoked.setdefault(fp, (person, when))
    rows = conn.exec_driver_sql("SELECT person, key_fingerprint, matcher, embedding, image_png, created"
                                + (", digest" if kind == 2 else "") + " FROM templates ORDER BY id").all()
    if kind == 2:
        people = {p: (fp, m, t) for p, fp, m, t in conn.exec_driver_sql(
            "SELECT person, key_fingerprint, matcher, enrolled FROM people ORDER BY person")}
    else:
        people = {}
        for person, fp, m, *_ in rows:              # the newest template's key wins
            people.pop(person, None)
            people[person] = (fp, m, now)
        for person, fp, m, *_ in rows:
            if fp != people[person][0] and fp not in revoked:
                revoked[fp] = (person, now)
                log.warning("gallery migration: '%s' had templates under two keys (a race in older versions); the "
                            "older key %s is now revoked", shown(person), fp)
    owners: dict[str, list[str]] = {}
    for person, (fp, _, _) in people.items():
        owners.setdefault(fp, []).append(person)
    shared = {fp: ps for fp, ps in owners.items() if len(ps) > 1}
    if shared and not revoke_shared:
        fp, ps = next(iter(shared.items()))
        raise GalleryError(f"gallery {where} cannot be migrated: key {fp} is the active key of "
                           f"{len(ps)} people ({', '.join(repr(shown(p)) for p in ps[:5])}), and a key now belongs "
                           f"to one person ({len(shared)} shared key(s) in all); nothing was changed. Revoke the "
                           "shared keys for all their people (each re-enrols under their own key) with "
                           "`faceanonymixer gallery migrate --revoke-shared-keys`, or keep using the older "
                           "faceanonymixer.")
    for fp, ps in shared.items():
        revoked.setdefault(fp, (ps[0], now))
        log.warning("gallery migration: key %s was shared by %d people; it is revoked for all of them (they re-enrol "
                    "under their own keys)", fp, len(ps))
    for person in [p for p, (fp, _, _) in people.items() if fp in revoked]:
        log.warning("gallery migration: '%s' had templates under a revoked key; they are dropped", shown(person))
        del people[person]
    templates, seen = [], set()
    for person, fp, m, emb, png, created, *dig in rows:
        if person not in people or people[person][:2] != (fp, m):
            continue
        d = dig[0] if dig else digest(np.frombuffer(emb, dtype=np.float32), png)
        if (person, d) in seen:
            continue
        seen.add((person, d))
        templates.append((person, fp, m, emb, png, d, created))
    return SimpleNamespace(revoked=revoked, people=people, templates=templates)
