"""The one gallery (gallery.py) opening galleries made by older code: the local SQLite-only formats v1 and v2
(binary fixtures in tests/data written by that code, tests/data/make_gallery_fixtures.py) and the service's schema
versions; plus what holds for every writer of the new schema, the file's mode, and the light import."""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny import run_cli

from faceanonymixer.gallery import SCHEMA_VERSION, Gallery, GalleryError, RevokedKeyError
from faceanonymixer.keys import Key, write_key_file

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def fp(i: int) -> str:
    return Key(bytes([i]) * 32).fingerprint


def legacy(path: Path, kind: int) -> dict:
    """What a legacy file holds, read with plain sqlite3: templates, active keys, revoked keys."""
    c = sqlite3.connect(path)
    tpl = sorted(c.execute("SELECT person, key_fingerprint, matcher, embedding, image_png FROM templates"))
    if kind == 2:
        active = dict(c.execute("SELECT person, key_fingerprint FROM people"))
    else:
        active = {p: k for p, k, *_ in tpl}
    revoked = {k for _, k in c.execute("SELECT person, key_fingerprint FROM revocations")}
    c.close()
    return dict(templates=tpl, active=active, revoked=revoked)


def migrated(path: Path) -> dict:
    c = sqlite3.connect(path)
    out = dict(templates=sorted(c.execute("SELECT person, key_fingerprint, matcher, embedding, image_png FROM "
                                          "fam_templates")),
               active=dict(c.execute("SELECT person, key_fingerprint FROM fam_people")),
               revoked={k for (k,) in c.execute("SELECT fingerprint FROM fam_keys WHERE state='revoked'")})
    c.close()
    return out


@pytest.mark.parametrize("kind", [1, 2])
def test_a_local_gallery_is_migrated_after_a_backup_keeping_everything(tmp_path, kind):
    db = tmp_path / "g.db"
    shutil.copy(DATA / f"gallery-v{kind}.db", db)
    before, original = legacy(db, kind), db.read_bytes()
    assert before["active"] and before["revoked"] and len(before["templates"]) >= 4
    with Gallery(db) as g:
        assert g.check() == []
        st = g.stats()
        for person, key in before["active"].items():
            assert g.active_key(person)[0] == key
        for key in before["revoked"]:
            assert g.is_revoked("anyone", key)
    backup = tmp_path / f"g.db.v{kind}-backup"
    assert backup.read_bytes() == original                       # the backup is the old file, byte for byte
    after = migrated(db)
    assert after == before                                       # every template, key state and revocation
    assert st == dict(people=len(before["active"]), templates=len(before["templates"]),
                      revoked_keys=len(before["revoked"]), schema=SCHEMA_VERSION)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # old code: too new
    mtime = backup.stat().st_mtime_ns
    with Gallery(db) as g:                                       # idempotent: a second open changes nothing
        assert g.stats() == st and g.check() == []
    assert migrated(db) == before and backup.stat().st_mtime_ns == mtime and backup.read_bytes() == original


def test_migrated_v2_keeps_its_rules_through_the_cli(tmp_path, capsys):
    db = tmp_path / "g.db"
    shutil.copy(DATA / "gallery-v2.db", db)
    keys = {}
    for i in (2, 3, 9):
        keys[i] = str(tmp_path / f"k{i}.key")
        write_key_file(keys[i], Key(bytes([i]) * 32))
    assert run_cli(["gallery", "list", "--gallery", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"alice\tkey {fp(1)}\tsface\t2 template(s)" in out and f"Zoë\tkey {fp(5)}\tarcface\t3 template(s)" in out
    # bob's revoked key stays revoked, for bob and for anyone; his active key cannot be taken by someone else
    for person, k, said in (("bob", 2, "revoked"), ("dan", 2, "revoked"), ("dan", 3, "another person id"),
                            ("bob", 9, "already enrolled under another key")):
        assert run_cli(["enrol", person, "x.jpg", "--key", keys[k], "--gallery", str(db)]) == 2
        assert said in capsys.readouterr().out, (person, k)
    assert run_cli(["revoke", "carol", "--gallery", str(db)]) == 2
    assert "already revoked" in capsys.readouterr().out
    assert run_cli(["gallery", "check", "--gallery", f"sqlite:///{db}"]) == 0      # a URL names the same file
    assert "ok (schema v4, 3 person(s), 7 template(s), 2 revoked key(s))" in capsys.readouterr().out


def test_an_existing_backup_is_never_replaced_without_the_flag(tmp_path, capsys):
    db, backup = tmp_path / "g.db", tmp_path / "g.db.v2-backup"
    shutil.copy(DATA / "gallery-v2.db", db)
    backup.write_bytes(b"somebody's other backup")
    original = db.read_bytes()
    with pytest.raises(GalleryError, match="already exists"):
        Gallery(db)
    assert run_cli(["gallery", "list", "--gallery", str(db)]) == 2
    assert "--overwrite-backup" in capsys.readouterr().out
    assert db.read_bytes() == original and backup.read_bytes() == b"somebody's other backup"
    assert run_cli(["gallery", "check", "--overwrite-backup", "--gallery", str(db)]) == 2   # only with migrate
    assert run_cli(["gallery", "migrate", "--overwrite-backup", "--gallery", str(db)]) == 0
    assert "schema v4 (3 person(s), 7 template(s), 2 revoked key(s))" in capsys.readouterr().out
    assert backup.read_bytes() == original
    assert run_cli(["gallery", "migrate", "--gallery", str(db)]) == 0           # already migrated: nothing to do
    assert backup.read_bytes() == original


def test_an_interrupted_migration_reuses_its_own_backup(tmp_path):
    """A crash after the backup copy and before the commit leaves the old file and its exact copy: the next open
    migrates (the copy is of this very file, so it is kept, not refused)."""
    db = tmp_path / "g.db"
    shutil.copy(DATA / "gallery-v1.db", db)
    shutil.copy(db, tmp_path / "g.db.v1-backup")
    with Gallery(db) as g:
        assert g.people() == ["alice", "bob"] and g.check() == []


def test_a_key_shared_by_two_people_is_refused_unless_revoked_for_all(tmp_path, capsys):
    db = tmp_path / "g.db"
    shutil.copy(DATA / "gallery-v2-shared-key.db", db)
    original = db.read_bytes()
    with pytest.raises(GalleryError, match=r"cannot be migrated: key \w+ is the active key of 2 people \('ann', 'ben'\)"):
        Gallery(db)
    assert db.read_bytes() == original and not (tmp_path / "g.db.v2-backup").exists()
    assert run_cli(["gallery", "list", "--gallery", str(db)]) == 2
    assert "--revoke-shared-keys" in capsys.readouterr().out
    assert run_cli(["gallery", "migrate", "--revoke-shared-keys", "--gallery", str(db)]) == 0
    assert "schema v4 (1 person(s), 1 template(s), 1 revoked key(s))" in capsys.readouterr().out
    assert (tmp_path / "g.db.v2-backup").read_bytes() == original
    with Gallery(db) as g:
        assert g.people() == ["cid"] and g.is_revoked("ann", fp(6)) and g.check() == []
        for person in ("ann", "ben"):
            with pytest.raises(RevokedKeyError):
                g.enrol(person, fp(6), "sface", np.eye(1, 8, dtype=np.float32))


def test_service_schema_versions_upgrade_and_gain_the_sqlite_rules(tmp_path):
    """A service gallery at each older version (1: gallery, 2: tokens, 3: roles) opens at v4; v4's triggers make
    a plain sqlite3 writer (foreign keys off, SQLite's default) obey the key rules too."""
    e = np.eye(1, 8, dtype=np.float32)
    for v in (1, 2, 3):
        url = f"sqlite:///{tmp_path / f'v{v}.db'}"
        with Gallery(url, create=True, target_version=v) as g:
            g.enrol("ana", "a" * 16, "sface", e, [np.zeros((4, 4, 3), np.uint8)])
            g.revoke("ana", "b" * 16, "sface", e, [np.ones((4, 4, 3), np.uint8)])
        with Gallery(url) as g:
            assert g.stats() == dict(people=1, templates=1, revoked_keys=1, schema=SCHEMA_VERSION)
            assert g.check() == []
        c = sqlite3.connect(tmp_path / f"v{v}.db")
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        for sql in ("INSERT INTO fam_people VALUES ('bob', 'aaaaaaaaaaaaaaaa', 'active', 'sface', 0)",   # revoked
                    "UPDATE fam_keys SET state='active' WHERE fingerprint='aaaaaaaaaaaaaaaa'",
                    "DELETE FROM fam_keys WHERE fingerprint='aaaaaaaaaaaaaaaa'",
                    "INSERT INTO fam_templates (person, key_fingerprint, matcher, embedding, digest, created) "
                    "VALUES ('ana', 'cccccccccccccccc', 'sface', x'00', 'd', 0)"):
            with pytest.raises(sqlite3.IntegrityError):
                c.execute(sql)
        c.close()


def test_new_local_gallery_is_private_and_a_revocation_leaves_no_trace_in_the_file(tmp_path):
    db = tmp_path / "g.db"
    png = b"\x89PNG-secret-template-bytes" * 20
    with Gallery(db, create=True) as g:
        g.enrol("ana", "a" * 16, "sface", np.eye(1, 8, dtype=np.float32), [png])
        g.revoke("ana")
        with pytest.raises(RevokedKeyError):
            g.enrol("ana", "a" * 16, "sface", np.eye(1, 8, dtype=np.float32), [png])
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
        assert b"secret-template" not in p.read_bytes(), p.name


def test_the_gallery_imports_without_sqlalchemy_and_postgresql_without_psycopg_is_a_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + sys.path))
    code = ("import sys; import faceanonymixer.gallery, faceanonymixer.workflow\n"
            "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
            "sys.modules['psycopg'] = None\n"
            "from faceanonymixer.gallery import Gallery, GalleryError\n"
            "try:\n    Gallery('postgresql://fam@localhost/g')\nexcept GalleryError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "PostgreSQL needs the psycopg package" in r.stdout and "faceanonymixer[service]" in r.stdout


def test_one_file_for_both_front_doors(tmp_path, capsys):
    """A gallery the service made (`serve token add --db sqlite:///FILE`) is the local commands' gallery too."""
    db = tmp_path / "service.db"
    assert run_cli(["serve", "token", "add", "ci", "--db", f"sqlite:///{db}"]) == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with Gallery(f"sqlite:///{db}") as g:                 # as the service stores: PNG bytes as received
        g.enrol("ana", fp(1), "sface", np.eye(2, 8, dtype=np.float32),
                [png for png in (_png(0), _png(1))])
    capsys.readouterr()
    assert run_cli(["gallery", "list", "--gallery", str(db)]) == 0
    assert capsys.readouterr().out == f"ana\tkey {fp(1)}\tsface\t2 template(s)\n"
    k = tmp_path / "k1.key"
    write_key_file(k, Key(bytes([1]) * 32))
    assert run_cli(["revoke", "ana", "--gallery", str(db)]) == 0
    assert run_cli(["enrol", "bob", "x.jpg", "--key", str(k), "--gallery", str(db)]) == 2     # revoked for anyone
    assert "revoked" in capsys.readouterr().out
    with Gallery(f"sqlite:///{db}") as g:
        assert g.person("ana")["revoked_keys"] == 1 and [n for n, _, _ in g.tokens()] == ["ci"]


def _png(i: int) -> bytes:
    from faceanonymixer.gallery import png_bytes
    return png_bytes(np.full((4, 4, 3), i, np.uint8))
