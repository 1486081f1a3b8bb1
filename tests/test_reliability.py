"""Nothing lost, nothing let in: the data-loss, revocation, secrecy and bad-input cases a careless user or an
attacker hit, each as the user would meet it (the real CLI on real sample photos, a tiny real model injected)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest

from _tiny import run_cli, tiny_protector
from faceanonymixer import cli
from faceanonymixer.gallery import Gallery, GalleryError
from faceanonymixer.keys import Key, write_key_file
from faceanonymixer.registry import data_dir

SAMPLES = data_dir() / "samples"
ROOT = Path(__file__).resolve().parents[1]
TINY = [sys.executable, str(ROOT / "tests" / "_tiny.py")]
needs_samples = pytest.mark.skipif(not (SAMPLES / "obama.jpg").is_file(), reason=f"sample photos not installed "
                                   f"in {SAMPLES} (make install)")


@pytest.fixture(scope="module")
def tiny():
    return tiny_protector()


run = run_cli


def people_dir(root: Path, layout: dict[str, list[str]]) -> Path:
    for person, photos in layout.items():
        (root / person).mkdir(parents=True, exist_ok=True)
        for i, ph in enumerate(photos):
            shutil.copy(SAMPLES / ph, root / person / f"{person}_{i}.jpg")
    return root


def key_file(tmp_path, byte: int) -> str:
    p = tmp_path / f"k{byte}.key"
    if not p.exists():
        write_key_file(p, Key(bytes([byte]) * 32))
    return str(p)


def visible(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if not any(s.startswith(".") for s in
                                                                        p.relative_to(d).parts))


# -- 1. outputs never overwrite originals or earlier outputs ---------------------------------------------------
@needs_samples
def test_out_equal_to_input_is_refused_and_originals_untouched(tiny, tmp_path, capsys):
    src = tmp_path / "me"
    src.mkdir()
    shutil.copy(SAMPLES / "obama.jpg", src / "me.jpg")
    (src / "me.json").write_text('{"mine": true}')
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    k = key_file(tmp_path, 1)
    for out in (src, tmp_path, src / "sub"):               # equal, a parent, inside
        assert run(["protect", str(src), "--key", k, "--out", str(out)], tiny) == 2
        assert "overlaps the input" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


@needs_samples
def test_rerun_never_overwrites_without_the_flag(tiny, tmp_path, capsys):
    src = people_dir(tmp_path / "in", {"alice": ["obama.jpg"]})
    out = tmp_path / "out"
    k1, k2 = key_file(tmp_path, 1), key_file(tmp_path, 2)
    assert run(["protect", str(src), "--key", k1, "--out", str(out), "--no-progress"], tiny) == 0
    first = (out / "alice" / "alice_0.png").read_bytes()
    capsys.readouterr()
    assert run(["protect", str(src), "--key", k1, "--out", str(out), "--no-progress"], tiny) == 0   # same run: resumed
    assert "1 already done" in capsys.readouterr().out
    assert run(["protect", str(src), "--key", k2, "--out", str(out), "--no-progress"], tiny) == 2   # another key
    assert "another run" in capsys.readouterr().out
    assert (out / "alice" / "alice_0.png").read_bytes() == first
    (out / "bob").mkdir()                                   # a folder the user made
    (out / "bob" / "notes.txt").write_text("mine")
    people_dir(src, {"bob": ["biden.jpg"]})
    for flags in ([], ["--overwrite"]):                     # never deleted, not even with --overwrite
        assert run(["protect", str(src), "--key", k1, "--out", str(out), "--no-progress"] + flags, tiny) == 2
        assert "is not a faceanonymixer output folder" in capsys.readouterr().out
        assert (out / "bob" / "notes.txt").read_text() == "mine"
    shutil.rmtree(out / "bob")
    assert run(["protect", str(src), "--key", k2, "--out", str(out), "--overwrite", "--no-progress"], tiny) == 0
    assert (out / "alice" / "alice_0.png").read_bytes() != first                    # our own output: replaced
    header = json.loads((out / "faceanonymixer-run.jsonl").read_text().splitlines()[0])
    assert header["key_fingerprint"] == Key(bytes([2]) * 32).fingerprint
    capsys.readouterr()
    # another run under k1 that covers only alice would leave bob (k2) beside it: refused, nothing mixed
    assert run(["protect", str(src / "alice"), "--key", k1, "--out", str(out), "--overwrite", "--no-progress"],
               tiny) == 2
    assert "must not mix" in capsys.readouterr().out


@needs_samples
def test_changed_or_added_photos_are_noticed(tiny, tmp_path, capsys):
    src = people_dir(tmp_path / "in", {"alice": ["obama.jpg"], "bob": ["biden.jpg"]})
    out, k = tmp_path / "out", key_file(tmp_path, 1)
    assert run(["protect", str(src), "--key", k, "--out", str(out), "--no-progress"], tiny) == 0
    before = (out / "alice" / "alice_0.png").read_bytes()
    shutil.copy(SAMPLES / "obama2.jpg", src / "alice" / "alice_0.jpg")          # replaced photo
    shutil.copy(SAMPLES / "obama3.jpg", src / "bob" / "bob_1.jpg")              # added photo
    capsys.readouterr()
    assert run(["protect", str(src), "--key", k, "--out", str(out), "--no-progress"], tiny) == 2
    o = capsys.readouterr().out
    assert "2 output folder(s) in the way" in o and "made from other photos" in o
    assert (out / "alice" / "alice_0.png").read_bytes() == before
    assert run(["protect", str(src), "--key", k, "--out", str(out), "--no-progress", "--overwrite"], tiny) == 0
    assert (out / "alice" / "alice_0.png").read_bytes() != before and (out / "bob" / "bob_1.png").is_file()


def test_torn_manifest_line_is_cut_and_damaged_manifest_named(tmp_path):
    from faceanonymixer.batch import MANIFEST, OutputError, Run
    out = tmp_path / "out"
    out.mkdir()
    head = json.dumps(dict(format="faceanonymixer-run", version=2, key_fingerprint="fp", config_hash="c"))
    (out / MANIFEST).write_text(head + "\n" + '{"person": "a", "files": {}}\n{"person": "b", "fi')
    r = Run(out, "fp", "c", overwrite=False, resume=False)
    r.close()
    assert list(r.people) == ["a"] and (out / MANIFEST).read_text().endswith("{}}\n")   # torn tail cut
    (out / MANIFEST).write_text(head + "\n" + '{"person": "a", "files": "x"}\n')
    with pytest.raises(OutputError, match="damaged"):
        Run(out, "fp", "c", overwrite=False, resume=False)


# -- 2, 3. a bad folder never stops the batch; the layout never depends on failures; no collisions -------------
@needs_samples
def test_bad_subfolder_is_listed_and_the_rest_protected(tiny, tmp_path, capsys):
    src = people_dir(tmp_path / "b3", {"bob": ["biden.jpg"], "dave": ["obama.jpg"]})
    (src / "a_empty").mkdir()
    out = tmp_path / "out"
    assert run(["protect", str(src), "--key", key_file(tmp_path, 1), "--out", str(out), "--no-progress"], tiny) == 1
    o = capsys.readouterr()
    assert "a_empty" in o.err and "no images" in o.err and "2 person(s)" in o.out
    assert visible(out) == ["bob", "bob/bob_0.json", "bob/bob_0.png", "dave", "dave/dave_0.json", "dave/dave_0.png",
                            "faceanonymixer-run.jsonl"]


@needs_samples
def test_two_inputs_with_one_person_name_do_not_collide(tiny, tmp_path, capsys):
    a = people_dir(tmp_path / "dup" / "a", {"alice": ["obama.jpg"]})
    b = people_dir(tmp_path / "dup" / "b", {"alice": ["biden.jpg"]})
    out = tmp_path / "out"
    assert run(["protect", str(a), str(b), "--key", key_file(tmp_path, 1), "--out", str(out), "--no-progress"],
               tiny) == 1
    err = capsys.readouterr().err
    assert "dup/b/alice" in err and "dup/a/alice" in err and "separate --out" in err
    assert visible(out / "alice") == ["alice_0.json", "alice_0.png"]


# -- 4. kill -9 at random points: only complete pairs, and the rerun finishes bit-identically ---------------------
def _check_complete_pairs(out: Path) -> None:
    import hashlib
    for d in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(q.name for q in d.iterdir())
        pngs = [n for n in names if n.endswith(".png")]
        assert pngs and names == sorted(pngs + [n[:-4] + ".json" for n in pngs]), (d, names)
        for n in pngs:
            side = json.loads((d / (n[:-4] + ".json")).read_text())
            assert side["image_sha256"] == hashlib.sha256((d / n).read_bytes()).hexdigest(), (d, n)
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(h == ".faceanonymixer.lock" or h.startswith((".fam-staging.", ".fam-replaced.", ".faceanonymixer-run"))
               for h in hidden), hidden


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != "faceanonymixer-run.jsonl"}


def _kill_test(tmp_path, kills: int, seed: int) -> None:
    import random
    import signal
    import time
    photos = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
    src = people_dir(tmp_path / "in", {f"p{i}": [photos[i % 4], photos[(i + 1) % 4]][: 1 + i % 2] for i in range(8)})
    k = key_file(tmp_path, 7)
    cmd = TINY + ["protect", str(src), "--key", k, "--no-progress", "--set", "protect.batch_people=2", "--out"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    full = time.perf_counter() - t0
    ref = _outputs(tmp_path / "ref")
    assert len([n for n in ref if n.endswith(".png")]) == 12
    out, rng = tmp_path / "out", random.Random(seed)
    for _ in range(kills):
        p = subprocess.Popen(cmd + [str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, full))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            _check_complete_pairs(out)
            done = _outputs(out)
            assert all(ref[n] == b for n, b in done.items())     # what is there is final and bit-identical
    done_before = len([d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]) if out.exists() else 0
    r = subprocess.run(cmd + [str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if done_before:                                         # it resumed: the finished people were not redone
        assert f"{8 - done_before} person(s)" in r.stdout and f"{done_before} already done" in r.stdout, r.stdout
    _check_complete_pairs(out)
    assert _outputs(out) == ref
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".faceanonymixer.lock"]


@pytest.mark.numerics   # determinism / recorded numbers: .ci/run reruns it on other CPUs' kernels
@needs_samples
def test_kill9_mid_batch_then_resume_is_bit_identical(tmp_path):
    _kill_test(tmp_path, kills=3, seed=0)


@needs_samples
@pytest.mark.slow
def test_kill9_twenty_times(tmp_path):
    _kill_test(tmp_path, kills=20, seed=1)


@needs_samples
def test_streaming_writes_each_batch_before_the_next(tiny, tmp_path, monkeypatch):
    """A crash in the second batch keeps the first batch's people on disk (today's main held everything until the
    end), and the rerun does only what is left."""
    from faceanonymixer.batch import plan_people, protect_dataset
    src = people_dir(tmp_path / "in", {"a": ["obama.jpg"], "b": ["biden.jpg"], "c": ["obama2.jpg"]})
    units, _ = plan_people([str(src)])
    prot = tiny_protector(batch_people=1)
    real, calls = prot.protect_people, []

    def crash_on_second(*a, **kw):
        calls.append(a[2])
        if len(calls) == 2:
            raise MemoryError("simulated crash")
        return real(*a, **kw)
    monkeypatch.setattr(prot, "protect_people", crash_on_second)
    with pytest.raises(MemoryError):
        protect_dataset(prot, units, Key(bytes(32)), tmp_path / "out", progress=False)
    assert visible(tmp_path / "out") == ["a", "a/a_0.json", "a/a_0.png", "faceanonymixer-run.jsonl"]
    calls.clear()
    monkeypatch.setattr(prot, "protect_people", lambda *a, **kw: (calls.append(a[2]), real(*a, **kw))[1])
    res = protect_dataset(prot, units, Key(bytes(32)), tmp_path / "out", progress=False)
    assert calls == [["b"], ["c"]] and res.skipped == ["a"] and res.written == ["b", "c"]


# -- 5-8. the gallery: nothing destroyed by a failed command, revocation enforced, one key per person --------------
@needs_samples
def test_revoke_with_a_bad_new_key_changes_nothing(tiny, tmp_path, capsys):
    db, k1 = str(tmp_path / "g.db"), key_file(tmp_path, 1)
    assert run(["enrol", "alice", str(SAMPLES / "obama.jpg"), "--key", k1, "--gallery", db], tiny) == 0
    (tmp_path / "garbage.key").write_text("garbage")
    assert run(["revoke", "alice", str(SAMPLES / "obama2.jpg"), "--new-key", str(tmp_path / "garbage.key"),
                "--gallery", db], tiny) == 2
    assert "garbage.key" in capsys.readouterr().out
    assert run(["revoke", "alice", str(tmp_path / "nothing.jpg"), "--new-key", str(tmp_path / "new.key"),
                "--gallery", db], tiny) == 2                 # no usable photo: nothing revoked either
    with Gallery(db) as g:
        assert len(g.templates("alice")) == 1 and g.active_key("alice")[0] == Key(bytes([1]) * 32).fingerprint
    assert run(["revoke", "alice", str(SAMPLES / "obama.jpg"), "--gallery", db], tiny) == 2   # photos need a new key
    assert "need a new key" in capsys.readouterr().out


def test_revoke_unknown_person_or_gallery_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nonexistent" / "sub" / "g.db"
    assert run(["revoke", "alice", "--gallery", str(db)]) == 2
    assert "does not exist" in capsys.readouterr().out and not (tmp_path / "nonexistent").exists()
    assert run(["gallery", "check", "--gallery", str(db)]) == 2 and not (tmp_path / "nonexistent").exists()
    with Gallery(tmp_path / "g.db", create=True) as g:
        g.enrol("bob", "fp1", "sface", np.eye(1, 4, dtype=np.float32))
    capsys.readouterr()
    assert run(["revoke", "nosuch", "--gallery", str(tmp_path / "g.db")]) == 2
    assert "'nosuch' is not enrolled" in capsys.readouterr().out
    assert run(["enrol", "x", "a.jpg", "--key", "k", "--gallery", str(db)]) == 2   # enrol: no folder made either
    assert not (tmp_path / "nonexistent").exists()


@needs_samples
def test_revoked_key_is_refused_for_good(tiny, tmp_path, capsys):
    db, k1, k2 = str(tmp_path / "g.db"), key_file(tmp_path, 1), key_file(tmp_path, 2)
    assert run(["enrol", "alice", str(SAMPLES / "obama.jpg"), "--key", k1, "--gallery", db], tiny) == 0
    assert run(["revoke", "alice", "--gallery", db], tiny) == 0
    capsys.readouterr()
    assert run(["enrol", "alice", str(SAMPLES / "obama.jpg"), "--key", k1, "--gallery", db], tiny) == 2
    assert "revoked" in capsys.readouterr().out
    rc = run(["verify", "alice", str(SAMPLES / "obama.jpg"), "--key", k1, "--gallery", db, "--threshold", "-1"], tiny)
    assert rc == 1 and "revoked" in capsys.readouterr().out
    assert run(["enrol", "alice", str(SAMPLES / "obama.jpg"), "--key", k2, "--gallery", db], tiny) == 0
    capsys.readouterr()
    assert run(["revoke", "alice", str(SAMPLES / "obama.jpg"), "--new-key", k1, "--gallery", db], tiny) == 2
    assert "revoked" in capsys.readouterr().out
    with Gallery(db) as g:                                 # the refused command changed nothing
        assert g.active_key("alice")[0] == Key(bytes([2]) * 32).fingerprint and len(g.templates("alice")) == 1
    with pytest.raises(sqlite3.IntegrityError):            # and the database itself refuses it, for any writer
        sqlite3.connect(db).execute("UPDATE fam_people SET key_fingerprint=? WHERE person='alice'",
                                    (Key(bytes([1]) * 32).fingerprint,))


def test_same_key_enrolled_twice_is_stored_once(tmp_path):
    e = np.eye(2, 4, dtype=np.float32)
    with Gallery(tmp_path / "g.db", create=True) as g:
        assert g.enrol("a", "fp", "sface", e) == 2
        assert g.enrol("a", "fp", "sface", e) == 0
        assert len(g.templates("a")) == 2


def _enrol_proc(db: str, person: str, fp: str, seed: int, q, barrier=None):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(2, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    try:
        with Gallery(db) as g:
            if barrier is not None:
                barrier.wait(30)                           # all processes write at the same instant
            if seed % 3 == 2:
                g.revoke(person)
                q.put(("revoked", fp))
            else:
                g.enrol(person, fp, "sface", e)
                q.put(("ok", fp))
    except GalleryError as ex:
        q.put(("refused", str(ex)[:80]))


def test_concurrent_enrols_and_revokes_keep_one_active_key(tmp_path):
    import multiprocessing as mp
    db = str(tmp_path / "g.db")
    Gallery(db, create=True).close()
    ctx = mp.get_context("fork")
    for rnd in range(3):
        q, barrier = ctx.Queue(), ctx.Barrier(6)
        procs = [ctx.Process(target=_enrol_proc, args=(db, "alice", f"fp{rnd}_{i}", i, q, barrier)) for i in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = [q.get(timeout=5) for _ in procs]
        assert all(r[0] in ("ok", "refused", "revoked") for r in results), results
        with Gallery(db) as g:
            assert g.check() == []
            act = g.active_key("alice")
            fps = {fp for fp, _, _ in g.templates("alice")}
            assert (act is None and not fps) or fps == {act[0]}
            revoked = {r[0] for r in sqlite3.connect(db).execute("SELECT fingerprint FROM fam_keys WHERE "
                                                                 "state='revoked'")}
            assert act is None or act[0] not in revoked
            ok = [r[1] for r in results if r[0] == "ok"]
            assert len(set(ok)) <= len(revoked) + 1           # each extra key that got in was revoked since


def test_v1_gallery_is_migrated_with_a_backup(tmp_path):
    db = tmp_path / "old.db"
    c = sqlite3.connect(db)
    c.executescript("""CREATE TABLE templates (id INTEGER PRIMARY KEY AUTOINCREMENT, person TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL, matcher TEXT NOT NULL, embedding BLOB NOT NULL, image_png BLOB,
        created REAL NOT NULL); CREATE TABLE revocations (person TEXT NOT NULL, key_fingerprint TEXT NOT NULL,
        revoked REAL NOT NULL);""")
    e = np.eye(1, 4, dtype=np.float32)[0].tobytes()
    rows = [("alice", "old", e), ("alice", "new", e), ("bob", "b1", e), ("carol", "c1", e)]
    c.executemany("INSERT INTO templates(person,key_fingerprint,matcher,embedding,created) VALUES (?,?,'sface',?,0)",
                  rows)
    c.execute("INSERT INTO revocations VALUES ('dave','d0',0)")
    c.commit()
    c.close()
    with Gallery(db) as g:
        assert g.active_key("alice") == ("new", "sface") and g.is_revoked("alice", "old")   # the v1 race resolved
        assert g.people() == ["alice", "bob", "carol"] and g.is_revoked("dave", "d0") and g.check() == []
    assert (tmp_path / "old.db.v1-backup").is_file()
    assert sqlite3.connect(tmp_path / "old.db.v1-backup").execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 4


def test_foreign_sqlite_is_never_changed_and_revoked_keys_are_refused_for_anyone(tmp_path, capsys):
    app = tmp_path / "app.db"
    c = sqlite3.connect(app)
    c.executescript("PRAGMA user_version=1; CREATE TABLE accounts(id INTEGER, name TEXT);")
    c.close()
    before = app.read_bytes()
    for argv in (["gallery", "check"], ["gallery", "list"], ["revoke", "alice"]):
        assert run(argv + ["--gallery", str(app)]) == 2
        assert "not a faceanonymixer gallery" in capsys.readouterr().out
    assert app.read_bytes() == before
    c = sqlite3.connect(app)
    c.executescript("PRAGMA user_version=2;")
    c.close()
    assert run(["gallery", "list", "--gallery", str(app)]) == 2            # v2 by number only: still refused
    e = np.eye(1, 4, dtype=np.float32)
    with Gallery(tmp_path / "g.db", create=True) as g:
        g.enrol("alice", "old", "sface", e)
        g.revoke("alice")
        for name in ("Alice", "bob"):                                      # another spelling, another person
            with pytest.raises(GalleryError, match="revoked"):
                g.enrol(name, "old", "sface", e)
        for bad in ("", " alice", "a\nb", "x" * 201):
            with pytest.raises(GalleryError, match="not allowed"):
                g.enrol(bad, "new", "sface", e)


def test_gallery_check_finds_tampering(tmp_path, capsys):
    db = tmp_path / "g.db"
    with Gallery(db, create=True) as g:
        g.enrol("a", "fp", "sface", np.eye(2, 4, dtype=np.float32), [np.zeros((8, 8, 3), np.uint8)] * 2)
    assert run(["gallery", "check", "--gallery", str(db)]) == 0
    assert "ok (schema v4, 1 person(s), 2 template(s)" in capsys.readouterr().out
    c = sqlite3.connect(db)
    c.execute("UPDATE fam_templates SET embedding=? WHERE id=1", (np.ones(4, np.float32).tobytes(),))
    c.execute("UPDATE fam_templates SET image_png=? WHERE id=2", (b"\x89PNG broken",))
    c.commit()
    c.close()
    assert run(["gallery", "check", "--gallery", str(db)]) == 1
    err = capsys.readouterr().err
    assert "template 1" in err and "unit vector" in err and "template 2" in err and "not a valid PNG" in err
    c = sqlite3.connect(db)
    c.execute("DROP TRIGGER fam_people_key_ins")                        # the rules themselves removed
    c.commit()
    c.close()
    assert run(["gallery", "check", "--gallery", str(db)]) == 1
    assert "fam_people_key_ins is missing" in capsys.readouterr().err


def test_locked_and_readonly_gallery_fail_before_any_work(tmp_path, capsys):
    db = tmp_path / "g.db"
    with Gallery(db, create=True) as g:
        g.enrol("a", "fp", "sface", np.eye(1, 4, dtype=np.float32))
    import faceanonymixer.gallery as gal
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    old, gal.BUSY_TIMEOUT_S = gal.BUSY_TIMEOUT_S, 0.2
    try:
        with pytest.raises(GalleryError, match="locked by another process"):
            with Gallery(db) as g:
                g.check_writable()
    finally:
        gal.BUSY_TIMEOUT_S = old
        holder.execute("ROLLBACK")
        holder.close()
    if os.geteuid() != 0:                                   # root ignores file modes
        os.chmod(db, 0o444)
        with pytest.raises(GalleryError, match="cannot be written"):
            with Gallery(db) as g:
                g.check_writable()


# -- 9. secrets never on the command line, never echoed -------------------------------------------------------
def test_passphrase_on_the_command_line_is_refused_and_never_echoed(capsys):
    for argv in (["verify", "alice", "x.jpg", "--passphrase", "my secret"],
                 ["verify", "alice", "x.jpg", "--passphrase=my secret"],
                 ["enrol", "alice", "x.jpg", "--pass", "my secret"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert "my secret" not in err and "--passphrase-env" in err
    assert run(["verify", "alice", "x.jpg", "--passphrase-env", "my secret", "--gallery", "g.db"]) == 2
    o = capsys.readouterr().out
    assert "my secret" not in o and "NAME of an environment variable" in o
    assert "--new-passphrase-env" in cli.build_parser()._subparsers._group_actions[0].choices["revoke"].format_help()
    os.environ.pop("hunter2", None)                        # a one-word passphrase looks like a variable name
    assert run(["verify", "alice", "x.jpg", "--passphrase-env", "hunter2", "--gallery", "g.db"]) == 2
    assert "hunter2" not in capsys.readouterr().out
    from faceanonymixer.errors import KeyFileError
    with pytest.raises(KeyFileError, match="too short"):   # a sidecar's fingerprint allows offline guessing
        Key.from_passphrase("sunshine1")


# -- 10. sidecars name nobody; the private manifest is opt-in ---------------------------------------------------
@needs_samples
def test_sidecars_do_not_name_the_person_or_source(tiny, tmp_path):
    src = people_dir(tmp_path / "in", {"Tony_Blair": ["obama.jpg"]})
    out, pm = tmp_path / "out", tmp_path / "private.json"
    k = key_file(tmp_path, 1)
    assert run(["protect", str(src), "--key", k, "--out", str(out), "--no-progress", "--private-manifest",
                str(out / "pm.json")], tiny) == 2          # the mapping must not sit beside the images
    assert run(["protect", str(src), "--key", k, "--out", str(out), "--no-progress", "--private-manifest", str(pm)],
               tiny) == 0
    side = (out / "Tony_Blair" / "Tony_Blair_0.json").read_text()
    assert "Tony" not in side and "source" not in side and "person" not in side
    lines = [json.loads(x) for x in pm.read_text().splitlines()]
    assert lines[0]["format"] == "faceanonymixer-private-manifest" and (pm.stat().st_mode & 0o777) == 0o600
    assert lines[1]["output"] == "Tony_Blair/Tony_Blair_0.png" and lines[1]["person"] == "Tony_Blair"
    k_file = Path(k)
    secret = k_file.read_bytes()
    assert run(["protect", str(src), "--key", k, "--out", str(tmp_path / "o2"), "--no-progress",
                "--private-manifest", str(k_file)], tiny) == 2   # someone else's file: refused before any work
    assert k_file.read_bytes() == secret and not (tmp_path / "o2").exists()


# -- 11, 12. bombs, huge files, FIFOs, foreign formats ------------------------------------------------------------
def _png_bomb(path: Path, side: int = 13000) -> None:
    """A valid greyscale PNG of side x side zeros (~0.6 MB on disk), streamed: never held in memory."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    z, row, parts = zlib.compressobj(9), b"\x00" * (side + 1), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_png_bomb_is_refused_within_a_memory_budget(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb)
    assert bomb.stat().st_size < 2_000_000
    # VmHWM: this process's peak RSS (ru_maxrss would carry over the forked pytest's across exec)
    code = ("import sys\nfrom faceanonymixer.images import read_image\nfrom faceanonymixer.errors import "
            "ImageError\ntry:\n    read_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)\n"
            "print([int(x.split()[1]) // 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0])")
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, check=True)
    msg, rss_mb = r.stdout.strip().splitlines()
    assert "bomb.png" in msg and "safety limit" in msg and "13000x13000" in msg
    assert int(rss_mb) < 300, rss_mb                       # it took 4 GB before


def test_foreign_format_named_jpg_is_not_decoded(tmp_path):
    from faceanonymixer.errors import ImageError
    from faceanonymixer.images import read_image
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    with pytest.raises(ImageError, match="not a readable image in a supported format"):
        read_image(eps)


def test_huge_key_file_and_special_files(tmp_path, capsys):
    from faceanonymixer.errors import KeyFileError
    from faceanonymixer.keys import read_key_file
    big = tmp_path / "big.key"
    with open(big, "wb") as f:                             # sparse: 3 GB that reads as zeros
        f.truncate(3 * 1024 ** 3)
    with pytest.raises(KeyFileError, match="too large"):
        read_key_file(big)
    fifo = tmp_path / "k.fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key_file(fifo)                                # returns at once: never opened for reading
    if Path("/dev/zero").exists():
        (tmp_path / "z.key").symlink_to("/dev/zero")
        with pytest.raises(KeyFileError, match="not a regular file"):
            read_key_file(tmp_path / "z.key")
    code = ("import sys\nfrom faceanonymixer.keys import read_key_file\ntry:\n    read_key_file(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__)\n"
            "print([int(x.split()[1]) // 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0])")
    r = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, check=True)
    err, rss_mb = r.stdout.split()
    assert err == "KeyFileError" and int(rss_mb) < 400, r.stdout     # never read whole (it took 3.4 GB before)
    from faceanonymixer.keys import write_key_file
    (tmp_path / "null.key").symlink_to("/dev/null")
    with pytest.raises(KeyFileError, match="not a regular file"):
        write_key_file(tmp_path / "null.key", overwrite=True)       # --force never writes through a link/device
    from faceanonymixer.batch import plan_people
    d = tmp_path / "batch" / "alice"
    d.mkdir(parents=True)
    os.mkfifo(d / "pipe.jpg")
    if Path("/dev/zero").exists():
        (d / "zero.png").symlink_to("/dev/zero")
    units, bad = plan_people([str(d)])
    assert {p.name for p in units[0].images} >= {"pipe.jpg"}   # kept, so protect lists it as a failure
    from faceanonymixer.errors import ImageError
    from faceanonymixer.images import read_image
    for p in units[0].images:
        with pytest.raises(ImageError, match="not a regular file"):
            read_image(p)


# -- 13. clear messages instead of tracebacks ------------------------------------------------------------------
@needs_samples
def test_unusable_out_is_refused_before_any_work(tmp_path, capsys):
    src = people_dir(tmp_path / "in", {"alice": ["obama.jpg"]})
    (tmp_path / "file").write_text("x")
    k = key_file(tmp_path, 1)
    # no protector injected: the check must come before the models are even loaded
    assert run(["protect", str(src), "--key", k, "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file" in capsys.readouterr().out
    assert run(["protect", str(src), "--key", k, "--out", "/proc/x/out"]) == 2
    assert "cannot be written" in capsys.readouterr().out


def test_config_values_are_checked(capsys):
    from faceanonymixer.config import ConfigError
    from faceanonymixer.workflow import load_config
    for ov, msg in [("protect.optim.steps=abc", "must be int"), ("protect.optim.steps=-3", r"must be in \[0, 100000\]"),
                    ("protect.batch_people=0", r"must be in \[1, 1024\]"), ("protect.optim.augment_copies=100000", "64"), ("protect.optim.lr=x", "must be float")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [ov])
    import torch
    if not torch.cuda.is_available():
        assert run(["verify", "a", "x.jpg", "--passphrase-env", "NOPE_UNSET_VAR"]) == 2      # (key error first)
        capsys.readouterr()
        from faceanonymixer.pipeline import Protector
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Protector(load_config(None, ["protect.models.device=cuda"]).protect)


def test_keygen_into_an_impossible_place_and_interrupts(tmp_path, capsys, monkeypatch):
    assert cli.main(["keygen", "--out", "/proc/x"]) == 2
    assert "cannot write key file /proc/x" in capsys.readouterr().err

    def interrupted(args):
        raise KeyboardInterrupt
    import faceanonymixer.cli.keygen as kg
    monkeypatch.setattr(kg, "run", interrupted)
    assert cli.main(["keygen", "--out", str(tmp_path / "k")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_deep_pickle_and_malicious_pt_get_whole_messages(tmp_path):
    import pickle

    import torch

    from faceanonymixer.errors import CheckpointFormatError
    from faceanonymixer.models.loading import load_generator
    n = 200_000
    deep = tmp_path / "deep.pkl"      # allow-listed opcodes only: G_ema = a persistent object nested 200k deep
    x = lambda s: b"X" + len(s).to_bytes(4, "little") + s  # noqa: E731 - BINUNICODE
    meta_open = (b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
                 + b"}" + x(b"state") + b"}" + x(b"_modules") + b"}" + x(b"m"))
    deep.write_bytes(b"\x80\x02}" + x(b"G_ema") + meta_open * n + b"N" + b"sss\x85R" * n + b"s.")
    with pytest.raises(CheckpointFormatError) as ei:
        load_generator(deep)
    assert "deep.pkl" in str(ei.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    evil = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, evil)
    with pytest.raises(CheckpointFormatError) as ei:
        load_generator(evil)
    msg = str(ei.value)
    assert "evil.pt" in msg and "system" in msg and "Nothing from it was executed" in msg and msg.endswith(".")
    del pickle


def test_file_names_with_a_newline_are_escaped(tmp_path, capsys):
    odd = tmp_path / "a\nerror: forged line.jpg"
    odd.write_bytes(b"not an image")
    from faceanonymixer.cli.common import report_bad
    from faceanonymixer.images import read_image
    from faceanonymixer.errors import ImageError
    with pytest.raises(ImageError) as ei:
        read_image(odd)
    report_bad([(str(odd), str(ei.value))])
    err = capsys.readouterr().err
    assert "\\n" in err and not any(line.startswith("error: forged") for line in err.splitlines())


def test_log_lines_escape_control_characters(capsys):
    import logging

    from faceanonymixer.cli import _EscapingFormatter
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "skipped %s", ("a\nerror: forged.jpg",), None)
    line = _EscapingFormatter("%(levelname)s %(message)s").format(rec)
    assert "\n" not in line and "\\n" in line


@needs_samples
def test_a_protect_that_fails_before_writing_leaves_no_empty_out_folder(tmp_path, capsys):
    """A missing mixer file is only found when the models load, after --out was checked (and created): the run
    ends with one clear message and removes the folders it made, never one that was there before."""
    src = people_dir(tmp_path / "photos", {"obama": ["obama.jpg"]})
    bad = ["--set", "protect.engine=mixer", "--set", f"protect.models.mixer={tmp_path / 'nowhere.safetensors'}"]
    out = tmp_path / "new" / "deeper" / "out"
    assert run(["protect", str(src), "--key", key_file(tmp_path, 1), "--out", str(out)] + bad) == 2
    assert "nowhere.safetensors" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()                 # every folder the run made is gone again
    kept = tmp_path / "kept"
    kept.mkdir()
    assert run(["protect", str(src), "--key", key_file(tmp_path, 1), "--out", str(kept)] + bad) == 2
    assert kept.is_dir() and visible(kept) == []           # a folder that existed stays
