"""The service's gallery of protected templates through SQLAlchemy Core: SQLite (``sqlite:///FILE``, zero
set-up) or PostgreSQL (``postgresql://...``, driven by psycopg 3). Same guarantees as the local SQLite gallery
(gallery.py, docs/security.md), enforced by the database's own constraints so that they hold for every writer:

* **one active key per person**: ``fam_people`` has one row per enrolled person; a template's (person, key,
  matcher) is a foreign key into it, so a template under another key or matcher cannot exist;
* **revoked keys never come back, for anyone**: every key fingerprint ever enrolled has one ``fam_keys`` row
  (``active`` or ``revoked``) naming the person it was enrolled for; a person row references its key's row
  *as active*, so a revoked fingerprint cannot be enrolled again by that person or any other, and a key active
  for one person cannot be taken by another;
* every change (enrol, revoke, revoke + re-enrol) is one transaction that first takes the gallery's write lock
  (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock), so checks and writes see the same
  state and a crash or shutdown leaves the old or the new gallery;
* the same template enrolled twice is stored once (``UNIQUE(person, digest)``).

Schema version: table ``fam_schema`` (one row). ``MIGRATIONS[i]`` upgrades version i to i+1, each in its own
transaction; opening a gallery at an older version upgrades it, a newer one is refused. API tokens live here too
(``fam_tokens``, SHA-256 of the token only: tokens are 256-bit random, so a fast hash is enough).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time

import numpy as np
from sqlalchemy import (CheckConstraint, Column, Float, ForeignKeyConstraint, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint, create_engine, event, func, inspect, select)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from ..fileio import shown
from ..gallery import (GalleryError, NotEnrolledError, RevokedKeyError, _check_embeddings, _digest, check_person)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# What an API token may do (each role includes the ones before it). Any token may read any person's state: the
# roles limit who can change the gallery, since a token that may enrol can add templates under any fingerprint.
ROLES = ("verify", "enrol", "admin")   # verify: info, verify, status; enrol: + enrol; admin: + revoke
BUSY_TIMEOUT_S = 30.0                     # SQLite: how long a writer waits for another writer
_PG_LOCK = 0x46414D                       # advisory lock id of the gallery's writers ("FAM")
TOKEN_BYTES = 32


class ConflictError(GalleryError):
    """The change contradicts the gallery's state (another key active, the key belongs to someone else)."""


class StoreUnavailable(GalleryError):
    """The database cannot be reached or is locked."""


meta = MetaData()
schema_t = Table("fam_schema", meta, Column("version", Integer, nullable=False))
keys_t = Table(
    "fam_keys", meta,
    Column("fingerprint", String(64), primary_key=True),
    Column("person", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("created", Float, nullable=False),
    Column("revoked", Float),
    CheckConstraint("state IN ('active', 'revoked')", name="fam_keys_state"),
    UniqueConstraint("fingerprint", "person", "state", name="fam_keys_ref"))
people_t = Table(
    "fam_people", meta,
    Column("person", Text, primary_key=True),
    Column("key_fingerprint", String(64), nullable=False, unique=True),
    Column("key_state", String(8), nullable=False, server_default="active"),
    Column("matcher", Text, nullable=False),
    Column("enrolled", Float, nullable=False),
    CheckConstraint("key_state = 'active'", name="fam_people_active"),
    ForeignKeyConstraint(["key_fingerprint", "person", "key_state"],
                         ["fam_keys.fingerprint", "fam_keys.person", "fam_keys.state"], name="fam_people_key"),
    UniqueConstraint("person", "key_fingerprint", "matcher", name="fam_people_ref"))
templates_t = Table(
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
    Index("fam_templates_by_person", "person"))
_TOKEN_COLUMNS = (lambda: [Column("name", String(100), primary_key=True),
                             Column("token_hash", String(64), nullable=False, unique=True),
                             Column("created", Float, nullable=False)])
_ROLE_SQL = "role VARCHAR(8) NOT NULL DEFAULT 'admin' CHECK (role IN ('verify', 'enrol', 'admin'))"
tokens_v2_t = Table("fam_tokens", MetaData(), *_TOKEN_COLUMNS())    # as schema v2 made it (no role)
tokens_t = Table(
    "fam_tokens", meta, *_TOKEN_COLUMNS(),
    Column("role", String(8), nullable=False, server_default="admin"))


def _v1(conn):        # the gallery
    for t in (keys_t, people_t, templates_t):
        t.create(conn)


def _v2(conn):        # API tokens
    tokens_v2_t.create(conn)


def _v3(conn):        # token roles; the tokens made before keep the full rights they had
    conn.exec_driver_sql(f"ALTER TABLE fam_tokens ADD COLUMN {_ROLE_SQL}")


MIGRATIONS = [_v1, _v2, _v3]   # MIGRATIONS[i]: version i -> i + 1
assert len(MIGRATIONS) == SCHEMA_VERSION


def engine_url(url: str):
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver, psycopg2, is not a dependency). A URL
    that does not parse is refused without repeating it (it may hold a password); so is an in-memory SQLite
    database (every connection would get its own empty gallery, lost at exit)."""
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
    return u


def _create_private(path: str) -> None:
    """Create a new SQLite file readable by its owner only (templates and token hashes are nobody else's business;
    SQLite gives its -wal and -shm files the same mode). An existing file keeps its mode."""
    if path and not os.path.exists(path) and os.path.isdir(os.path.dirname(os.path.abspath(path))):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:      # made by another process meanwhile: theirs
            pass
    elif path and os.path.isfile(path) and os.stat(path).st_mode & 0o077:
        log.warning("service gallery %s can be read by other users (mode %o); `chmod 600` it and its -wal/-shm "
                    "files", shown(path), os.stat(path).st_mode & 0o777)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """``Store(url)``: the service gallery. Opens (and creates or upgrades) the schema; ``close()`` when done.

    url: SQLAlchemy URL; sqlite:///FILE (created in an existing folder) or postgresql://USER@HOST/DB."""

    def __init__(self, url: str, migrate: bool = True, target_version: int = SCHEMA_VERSION):
        self.url = engine_url(url)
        self.where = self.url.render_as_string(hide_password=True)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        kw = {}
        if self.sqlite:
            kw["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
            _create_private(self.url.database)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=not self.sqlite, **kw)
        except (sa_exc.ArgumentError, ImportError) as e:
            raise GalleryError(f"database {self.where}: {e}") from None
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        if migrate:
            self.migrate(target_version)

    def close(self):
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transactions -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self, write: bool):
        """One transaction; a write first takes the gallery's write lock, so the checks inside it and the
        writes see the same state. Database failures become StoreUnavailable / ConflictError messages."""
        try:
            with self.engine.connect().execution_options(fam_write=write) as conn:
                with conn.begin():
                    if write and not self.sqlite:
                        conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK)))
                    yield conn
        except sa_exc.IntegrityError as e:
            raise ConflictError(f"the gallery refused the change ({_first_line(e.orig)}); nothing was changed") \
                from None
        except sa_exc.OperationalError as e:
            msg = _first_line(e.orig)
            if "locked" in msg or "busy" in msg:
                raise StoreUnavailable(f"database {self.where} is locked by another writer (waited "
                                       f"{BUSY_TIMEOUT_S:.0f} s); nothing was changed, retry") from None
            raise StoreUnavailable(f"database {self.where} failed ({msg}); nothing was changed") from None
        except sa_exc.DatabaseError as e:     # e.g. a file that is not an SQLite database
            raise StoreUnavailable(f"database {self.where} cannot be used ({_first_line(e.orig)}); check the "
                                   "--db URL; nothing was changed") from None

    def version(self, conn) -> int | None:
        if not inspect(conn).has_table("fam_schema"):
            return None
        return conn.execute(select(schema_t.c.version)).scalar_one_or_none()

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Create the schema in an empty database or upgrade an older one, one version per transaction.
        Returns the version reached."""
        start, first = None, True
        while True:
            with self._tx(write=True) as conn:
                v = self.version(conn)
                if first:
                    start, first = v, False
                if v is None:
                    ours = [t for t in inspect(conn).get_table_names() if t.startswith("fam_")]
                    if ours:
                        raise GalleryError(f"database {self.where} holds tables {ours} but no fam_schema version: "
                                           "not a faceanonymixer service gallery; it was not changed")
                    schema_t.create(conn)
                    conn.execute(schema_t.insert().values(version=0))
                    v = 0
                if v > SCHEMA_VERSION:
                    raise GalleryError(f"database {self.where} has schema version {v}, newer than this faceanonymixer "
                                       f"understands ({SCHEMA_VERSION}); upgrade faceanonymixer")
                if v >= target:
                    return v
                MIGRATIONS[v](conn)
                conn.execute(schema_t.update().values(version=v + 1))
                if start:   # an existing gallery, not a new one
                    log.info("service gallery %s upgraded from schema v%d to v%d", self.where, v, v + 1)

    def ping(self) -> None:
        with self._tx(write=False) as conn:
            conn.execute(select(schema_t.c.version)).scalar_one()

    # -- reads --------------------------------------------------------------------------------------------
    @staticmethod
    def _active(conn, person):
        r = conn.execute(select(people_t.c.key_fingerprint, people_t.c.matcher, people_t.c.enrolled)
                         .where(people_t.c.person == person)).first()
        return None if r is None else tuple(r)

    def templates(self, person: str, key_fingerprint: str | None = None) -> tuple[list[tuple[str, str, np.ndarray]],
                                                                                  bool]:
        """([(key_fingerprint, matcher, embedding[D])], whether ``key_fingerprint`` is revoked) in one read."""
        with self._tx(write=False) as conn:
            rows = conn.execute(select(templates_t.c.key_fingerprint, templates_t.c.matcher, templates_t.c.embedding)
                                .where(templates_t.c.person == person).order_by(templates_t.c.id)).all()
            revoked = key_fingerprint is not None and self._key_state(conn, key_fingerprint)[0] == "revoked"
        return [(fp, m, np.frombuffer(e, dtype=np.float32).copy()) for fp, m, e in rows], revoked

    @staticmethod
    def _key_state(conn, fp) -> tuple[str | None, str | None]:
        r = conn.execute(select(keys_t.c.state, keys_t.c.person).where(keys_t.c.fingerprint == fp)).first()
        return (None, None) if r is None else (r[0], r[1])

    def person(self, person: str) -> dict:
        """What the service tells about a person id: enrolled or not, active key, matcher, template count,
        number of revoked keys."""
        check_person(person)
        with self._tx(write=False) as conn:
            act = self._active(conn, person)
            n = conn.execute(select(func.count()).select_from(templates_t)
                             .where(templates_t.c.person == person)).scalar_one()
            nrev = conn.execute(select(func.count()).select_from(keys_t).where(
                keys_t.c.person == person, keys_t.c.state == "revoked")).scalar_one()
        out = dict(person=person, enrolled=act is not None, templates=int(n), revoked_keys=int(nrev))
        if act is not None:
            out.update(key_fingerprint=act[0], matcher=act[1], enrolled_at=act[2])
        return out

    def stats(self) -> dict:
        with self._tx(write=False) as conn:
            q = lambda t: conn.execute(select(func.count()).select_from(t)).scalar_one()  # noqa: E731
            return dict(people=q(people_t), templates=q(templates_t),
                        revoked_keys=conn.execute(select(func.count()).select_from(keys_t)
                                                  .where(keys_t.c.state == "revoked")).scalar_one(),
                        schema=self.version(conn))

    # -- checks (also run inside each write transaction) --------------------------------------------------
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
                                f"(`faceanonymixer client revoke {shown(person)}`)")
        if cur[1] != matcher:
            raise ConflictError(f"'{shown(person)}' is enrolled with matcher {cur[1]}, not {matcher}; revoke and "
                                "re-enrol")

    def _not_enrolled(self, conn, person) -> NotEnrolledError:
        revoked = conn.execute(select(func.count()).select_from(keys_t).where(
            keys_t.c.person == person, keys_t.c.state == "revoked")).scalar_one()
        why = ("was already revoked; enrol them under a new key" if revoked else
               "is not enrolled; check the person id")
        return NotEnrolledError(f"'{shown(person)}' {why}. Nothing was changed.")

    def precheck_enrol(self, person: str, key_fingerprint: str, matcher: str) -> None:
        with self._tx(write=False) as conn:
            self._precheck(conn, person, key_fingerprint, matcher)

    def precheck_revoke(self, person: str, new_key_fingerprint: str | None, matcher: str) -> tuple[str, str]:
        with self._tx(write=False) as conn:
            cur = self._active(conn, person)
            if cur is None:
                check_person(person)
                raise self._not_enrolled(conn, person)
            if new_key_fingerprint is not None:
                self._precheck(conn, person, new_key_fingerprint, matcher, replacing=True)
            return cur[0], cur[1]

    # -- writes -------------------------------------------------------------------------------------------
    def _insert(self, conn, person, fp, matcher, emb, pngs) -> int:
        now = time.time()
        if self._active(conn, person) is None:
            if self._key_state(conn, fp)[0] is None:
                conn.execute(keys_t.insert().values(fingerprint=fp, person=person, state="active", created=now))
            conn.execute(people_t.insert().values(person=person, key_fingerprint=fp, key_state="active",
                                                  matcher=matcher, enrolled=now))
        have = set(conn.execute(select(templates_t.c.digest).where(templates_t.c.person == person)).scalars())
        added = 0
        for i in range(emb.shape[0]):
            png = pngs[i] if pngs is not None else None
            d = _digest(emb[i], png)
            if d in have:          # stored once (the UNIQUE constraint backs this up)
                continue
            conn.execute(templates_t.insert().values(person=person, key_fingerprint=fp, matcher=matcher,
                                                     embedding=emb[i].tobytes(), image_png=png, digest=d,
                                                     created=now))
            have.add(d)
            added += 1
        return added

    def enrol(self, person: str, key_fingerprint: str, matcher: str, embeddings: np.ndarray,
              pngs: list[bytes] | None = None) -> int:
        """Store templates (embeddings[n,D] float32, the n protected PNGs) in one transaction after the same
        checks as ``precheck_enrol``. Returns the number of new templates."""
        emb = _check_embeddings(embeddings, pngs)
        with self._tx(write=True) as conn:
            self._precheck(conn, person, key_fingerprint, matcher)
            return self._insert(conn, person, key_fingerprint, matcher, emb, pngs)

    def revoke(self, person: str, new_key_fingerprint: str | None = None, matcher: str | None = None,
               embeddings: np.ndarray | None = None, pngs: list[bytes] | None = None) -> tuple[str, int, int]:
        """Revoke ``person``'s active key for good; with a new key and its templates, re-enrol in the same
        transaction (both or neither). Returns (revoked fingerprint, templates deleted, templates added)."""
        emb = _check_embeddings(embeddings, pngs) if embeddings is not None else None
        with self._tx(write=True) as conn:
            cur = self._active(conn, person)
            if cur is None:
                check_person(person)
                raise self._not_enrolled(conn, person)
            if new_key_fingerprint is not None:
                self._precheck(conn, person, new_key_fingerprint, matcher or cur[1], replacing=True)
            n = conn.execute(templates_t.delete().where(templates_t.c.person == person)).rowcount
            conn.execute(people_t.delete().where(people_t.c.person == person))
            conn.execute(keys_t.update().where(keys_t.c.fingerprint == cur[0])
                         .values(state="revoked", revoked=time.time()))
            added = 0
            if new_key_fingerprint is not None and emb is not None:
                added = self._insert(conn, person, new_key_fingerprint, matcher or cur[1], emb, pngs)
            return cur[0], int(n), added

    # -- API tokens ---------------------------------------------------------------------------------------
    def add_token(self, name: str, role: str = "verify") -> str:
        """A new random token for client ``name`` with ``role`` (ROLES: verify, enrol, admin); only its hash is
        stored. Returns the token (show it once)."""
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable() or name != name.strip():
            raise GalleryError(f"token name '{shown(name)}' is not allowed: 1-100 printable characters")
        if role not in ROLES:
            raise GalleryError(f"token role '{shown(role)}' is not one of {', '.join(ROLES)}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._tx(write=True) as conn:
            if conn.execute(select(tokens_t.c.name).where(tokens_t.c.name == name)).first():
                raise ConflictError(f"a token named '{shown(name)}' exists; remove it first "
                                    f"(`faceanonymixer serve token remove {shown(name)}`)")
            conn.execute(tokens_t.insert().values(name=name, token_hash=hash_token(token), created=time.time(),
                                                  role=role))
        return token

    def remove_token(self, name: str) -> None:
        with self._tx(write=True) as conn:
            if conn.execute(tokens_t.delete().where(tokens_t.c.name == name)).rowcount == 0:
                raise GalleryError(f"no token named '{shown(name)}' (`faceanonymixer serve token list`)")

    def tokens(self) -> list[tuple[str, float, str]]:
        """[(name, created, role)] by name."""
        with self._tx(write=False) as conn:
            return [(n, c, r) for n, c, r in conn.execute(select(tokens_t.c.name, tokens_t.c.created, tokens_t.c.role)
                                                          .order_by(tokens_t.c.name))]

    def token_name(self, token: str) -> str | None:
        """The client name of a presented token, or None."""
        found = self.token_client(token)
        return None if found is None else found[0]

    def token_client(self, token: str) -> tuple[str, str] | None:
        """(client name, role) of a presented token, or None."""
        h = hash_token(token)
        with self._tx(write=False) as conn:
            r = conn.execute(select(tokens_t.c.name, tokens_t.c.role).where(tokens_t.c.token_hash == h)).first()
        return None if r is None else (r[0], r[1])


def _first_line(e) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _sqlite_connect(dbapi_conn, _record):
    dbapi_conn.isolation_level = None          # we issue BEGIN ourselves (_sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")      # the one-key / revoked-key rules are foreign keys
    cur.execute("PRAGMA secure_delete=ON")     # deleted templates are overwritten on disk
    cur.execute("PRAGMA journal_mode=WAL")     # readers are not blocked by a writer
    cur.close()


def _sqlite_begin(conn):
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("fam_write") else "BEGIN")
