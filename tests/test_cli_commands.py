"""Every command of ``faceanonymixer --help`` runs its documented example (the --help epilog), with the fastest
settings, through the real entry point ``cli.main``, and what a person reads is checked: the output is there, it
says what was done, and the exit code is right. A restructuring that drops a command's output fails here.

The shipped 64-px models, the registry's recognisers and the installed sample photos; outputs under tmp_path.
Where the example needs data that is not here (LFW, the official checkpoints), the clear error and its exit code
are what is tested, plus the same command on a tiny identity-folder tree built from the sample photos. Longer runs
of the same commands (mechanics, resume, faults) live in the tests of their modules."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import signal
from pathlib import Path

import pytest
from PIL import Image

from _server import ServerProcess

from faceanonymixer import cli
from faceanonymixer.keys import Key, read_key_file, write_key_file
from faceanonymixer.registry import MODELS, data_dir, locate
from faceanonymixer.errors import FaceAnonyMixerError

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = data_dir() / "samples"
# the workflow's fastest settings: one optimisation step on one augmented copy
FAST = ["--set", "protect.optim.steps=1", "--set", "protect.optim.augment_copies=1"]


def run(argv: list[str]) -> tuple[int, str, str]:
    """``faceanonymixer ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _embedded_present() -> bool:
    try:
        for name in ("fam-stylegan2-64", "fam-e4e-64", "sface", "yunet"):
            locate(name)
        return (SAMPLES / "obama.jpg").is_file()
    except FaceAnonyMixerError:
        return False


needs_models = pytest.mark.skipif(not _embedded_present(), reason="embedded models, SFace/YuNet or the sample photos "
                                  "are not installed (make install)")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """photos/<person>/ for protect and enrol; lfw/images/<Name>/<Name>_NNNN.jpg (LFW layout) for fr-eval and
    evaluate; two key files."""
    if not (SAMPLES / "obama.jpg").is_file():
        pytest.skip(f"sample photos not found in {SAMPLES} (run `make install`)")
    d = tmp_path_factory.mktemp("cli")
    (d / "photos" / "obama").mkdir(parents=True)
    (d / "photos" / "biden").mkdir()
    for f in ("obama.jpg", "obama2.jpg"):
        shutil.copy(SAMPLES / f, d / "photos" / "obama" / f)
    shutil.copy(SAMPLES / "biden.jpg", d / "photos" / "biden" / "biden.jpg")
    lfw = d / "lfw" / "images"
    for i, f in enumerate(("obama.jpg", "obama2.jpg", "obama3.jpg"), 1):
        (lfw / "Barack_Obama").mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / f, lfw / "Barack_Obama" / f"Barack_Obama_{i:04d}.jpg")
    (lfw / "Joe_Biden").mkdir()
    b = Image.open(SAMPLES / "biden.jpg").convert("RGB")
    b.save(lfw / "Joe_Biden" / "Joe_Biden_0001.jpg", quality=95)
    b.transpose(Image.FLIP_LEFT_RIGHT).save(lfw / "Joe_Biden" / "Joe_Biden_0002.jpg", quality=95)
    write_key_file(d / "alice.key", Key(bytes([1]) * 32))
    write_key_file(d / "other.key", Key(bytes([2]) * 32))
    return d


def test_every_command_has_an_example_and_a_test_here():
    """A new command without a documented example or a test of its output fails here."""
    tests = {n for n in globals() if n.startswith("test_")}
    for name, _ in cli.COMMANDS:
        assert f"  faceanonymixer {name} " in cli.EXAMPLES, f"no example for `{name}` in the --help epilog"
        assert any(t == f"test_{name.replace('-', '_')}" or t.startswith(f"test_{name.replace('-', '_')}_")
                   for t in tests), f"no test of `faceanonymixer {name}` in {Path(__file__).name}"
    rc, out, _ = run([])
    assert rc == 2 and all(name in out for name, _ in cli.COMMANDS)       # no command: the help, listing them all


# -- weights -------------------------------------------------------------------------------------------------
def _block(out: str, name: str) -> str:
    """The table's lines for model ``name`` (its row and the indented lines under it)."""
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.split()[:1] == [name])
    j = next((k for k in range(i + 1, len(lines)) if not lines[k].startswith("    ")), len(lines))
    return "\n".join(lines[i:j])


def test_weights_prints_the_table(tmp_path, monkeypatch):
    """`faceanonymixer weights`: a row per model, present with its path or MISSING with where it was looked for
    and how to get it. A fake official checkpoint in $FACEANONYMIXER_HOME shows as present there."""
    home = tmp_path / "home"
    home.mkdir()
    (home / MODELS["e4e-ffhq"].filename).write_bytes(b"not really a checkpoint")
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(home))
    rc, out, err = run(["weights"])
    assert rc == 0 and err == ""
    assert "MODEL" in out and "STATUS" in out and "SHA256" in out and str(home) in out.splitlines()[0]
    for name in MODELS:
        assert out.count(f"\n{name} ") == 1, name                   # one row per model
    fake = _block(out, "e4e-ffhq")
    assert " present " in fake and f"path:      {home / MODELS['e4e-ffhq'].filename}" in fake
    missing = _block(out, "stylegan2-ffhq-1024")
    assert "MISSING" in missing and str(home / MODELS["stylegan2-ffhq-1024"].filename) in missing
    assert "to get it: " + MODELS["stylegan2-ffhq-1024"].obtain in missing
    assert "not pinned" in missing and "licence:" in missing
    summary = out.strip().splitlines()
    assert any(ln.startswith(f"{len(MODELS) - out.count(' MISSING ')} of {len(MODELS)} models present; missing: ")
               and "stylegan2-ffhq-1024" in ln and "e4e-ffhq" not in ln for ln in summary[-2:])
    rc, js, _ = run(["weights", "--json"])
    rows = {r["name"]: r for r in json.loads(js)}
    assert rc == 0 and rows["e4e-ffhq"]["present"] and not rows["stylegan2-ffhq-1024"]["present"]


def test_weights_verify_reports_a_sha256_mismatch(tmp_path, monkeypatch):
    """A pinned model replaced by another file: --verify says MISMATCH, how to fix it, and exits 1; without
    --verify the digest is 'pinned, not checked'."""
    home = tmp_path / "home"
    home.mkdir()
    (home / MODELS["yunet"].filename).write_bytes(b"a different file")   # found before the package's copy
    monkeypatch.setenv("FACEANONYMIXER_HOME", str(home))
    rc, out, _ = run(["weights"])
    assert rc == 0 and "pinned, not checked (--verify)" in _block(out, "yunet")
    rc, out, _ = run(["weights", "--verify"])
    bad = _block(out, "yunet")
    assert rc == 1 and "MISMATCH" in bad and "corrupt or another version" in bad and MODELS["yunet"].obtain in bad
    assert "; sha256 mismatch: yunet" in out


# -- fr-eval -------------------------------------------------------------------------------------------------
@needs_models
def test_fr_eval(ws, tmp_path):
    """`fr-eval --pairs pairs.txt --root lfw/images --model sface` on an LFW-format pairs.txt of the samples."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t2\nBarack_Obama\t1\t2\nBarack_Obama\t1\t3\n"
                     "Barack_Obama\t1\tJoe_Biden\t1\nBarack_Obama\t2\tJoe_Biden\t2\n")
    rc, out, _ = run(["fr-eval", "--pairs", str(pairs), "--root", str(ws / "lfw" / "images"), "--model", "sface",
                      "--folds", "2", "--no-progress"])
    assert rc == 0
    assert out.startswith(f"fr-eval: model sface (crop), pairs {pairs}: 4 (2 genuine, 2 impostor)")
    assert "pairs: 4 (2 genuine, 2 impostor), scored 4, failed 0" in out
    assert "2-fold accuracy: " in out and "EER: " in out and "TAR@FAR=0.001: " in out
    res = json.loads(out.strip().splitlines()[-1])                  # the last line: every number as JSON
    assert res["command"] == "fr-eval" and res["n_scored"] == 4 and res["genuine_mean"] > res["impostor_mean"]
    rc, out, err = run(["fr-eval", "--pairs", str(tmp_path / "nope.txt"), "--root", str(ws), "--model", "sface"])
    assert rc == 2 and "nope.txt: pairs file not found" in err and out == ""


# -- generate, invert, train ---------------------------------------------------------------------------------
@needs_models
def test_generate(tmp_path):
    """`generate --seeds 0-15 --out samples/` (four seeds here)."""
    out_dir = tmp_path / "samples"
    rc, out, _ = run(["generate", "--seeds", "0-3", "--out", str(out_dir)])
    assert rc == 0 and out.strip() == f"wrote 4 images and grid.png to {out_dir}"
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["grid.png"] + [f"seed{i:04d}.png" for i in range(4)]


@needs_models
def test_invert(tmp_path):
    """`invert photo.jpg --out recon/`; an unreadable item is listed by name and the exit code is 1."""
    recon = tmp_path / "recon"
    rc, out, _ = run(["invert", str(SAMPLES / "obama.jpg"), "--out", str(recon)])
    assert rc == 0 and out.strip() == f"inverted 1 image(s) into {recon}"
    assert (recon / "obama.png").is_file() and (recon / "obama_pair.png").is_file()
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_text("hello")
    rc, out, _ = run(["invert", str(bad), "--out", str(recon)])
    assert rc == 1 and "inverted 0 image(s)" in out and "1 item(s) failed" in out and "not_a_photo.jpg" in out


@needs_models
def test_train(ws, tmp_path):
    """`train generator --config configs/train_generator.yaml --minutes 60 --export gen.safetensors` on the
    sample photos with a tiny network and two steps; without data the error names both ways to give it."""
    out_dir, gen = tmp_path / "run", tmp_path / "gen.safetensors"
    tiny = ["--set", f"data={ws / 'lfw' / 'images'}", "--set", f"cache={tmp_path / 'cache'}", "--set", f"out={out_dir}",
            "--set", "resolution=32", "--set", "channels={4: 16, 8: 16, 16: 8, 32: 8}",
            "--set", "d_channels={4: 16, 8: 16, 16: 8, 32: 8}", "--set", "z_dim=16", "--set", "w_dim=16",
            "--set", "n_mlp=1", "--set", "batch=2", "--set", "total_kimg=0.004", "--set", "id_diversity=0",
            "--set", "id_band=0", "--set", "threads=1", "--set", "identity_layers=[1,2,3]"]
    argv = ["train", "generator", "--config", str(ROOT / "configs" / "train_generator.yaml"), "--minutes", "60",
            "--export", str(gen)]
    rc, out, _ = run(argv + tiny)
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert lines[-2] == (f"trained the generator to step 2: checkpoint {out_dir / 'checkpoint.pt'} (the same command "
                         "continues from it)")
    assert lines[-1] == f"exported the generator to {gen} (EMA weights)"
    assert gen.is_file() and gen.with_suffix(".json").is_file()
    rc, out, err = run(["train", "generator", "--config", str(ROOT / "configs" / "train_generator.yaml"),
                        "--set", f"cache={tmp_path / 'empty'}", "--set", f"out={tmp_path / 'run2'}",
                        "--set", f"data={tmp_path / 'no_such_folder'}"])
    assert rc == 2 and "no_such_folder does not exist" in err and "FACEANONYMIXER_LFW" in err and out == ""


# -- keygen, protect -----------------------------------------------------------------------------------------
def test_keygen(tmp_path):
    """`keygen --out alice.key`: mode 0600, the fingerprint printed, never the key; never overwritten."""
    key = tmp_path / "alice.key"
    rc, out, _ = run(["keygen", "--out", str(key)])
    fp = read_key_file(key).fingerprint
    assert rc == 0 and out.strip() == f"wrote {key} (fingerprint {fp}); keep it secret, it cannot be recovered"
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text().split()[-1] not in out
    rc, out, err = run(["keygen", "--out", str(key)])
    assert rc == 2 and out == "" and f"{key} already exists" in err and read_key_file(key).fingerprint == fp
    assert "--force" in err                                                   # the way out is named
    rc, out, _ = run(["keygen", "--out", str(key), "--force"])
    assert rc == 0 and read_key_file(key).fingerprint != fp


@needs_models
def test_protect(ws, tmp_path):
    """`protect photos/ --key alice.key --out protected/`: one folder per person, a PNG and a sidecar per photo;
    the same command again resumes (nothing redone)."""
    prot = tmp_path / "protected"
    argv = ["protect", str(ws / "photos"), "--key", str(ws / "alice.key"), "--out", str(prot), "--no-progress", *FAST]
    rc, out, err = run(argv)
    fp = read_key_file(ws / "alice.key").fingerprint
    assert rc == 0, err
    assert out.strip() == (f"key {fp}: 2 person(s), 3 image(s) written to {prot}; manifest "
                           f"{prot / 'faceanonymixer-run.jsonl'}")
    assert sorted(p.name for p in (prot / "obama").iterdir()) == ["obama.json", "obama.png", "obama2.json",
                                                                 "obama2.png"]
    rc, out, _ = run(argv)
    assert rc == 0 and f"key {fp}: 0 person(s), 0 image(s) written to {prot}; 2 already done (resumed)" in out


# -- enrol, verify, revoke, gallery --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def enrolled(ws, tmp_path_factory):
    """`enrol alice photos/alice --key alice.key --gallery gallery.db` (Obama's two photos), run once."""
    db = tmp_path_factory.mktemp("gallery") / "gallery.db"
    rc, out, err = run(["enrol", "obama", str(ws / "photos" / "obama"), "--key", str(ws / "alice.key"),
                        "--gallery", str(db), *FAST])
    return dict(db=db, rc=rc, out=out, err=err, fp=read_key_file(ws / "alice.key").fingerprint)


def _copy(db: Path, tmp_path: Path) -> str:
    shutil.copy(db, tmp_path / "gallery.db")
    return str(tmp_path / "gallery.db")


@needs_models
def test_enrol(enrolled, ws):
    e = enrolled
    assert e["rc"] == 0, e["err"]
    assert e["out"].strip() == f"enrolled 2 protected template(s) for 'obama' (key {e['fp']})"
    # another key for an enrolled person is refused before any work, saying what to do
    rc, out, err = run(["enrol", "obama", str(SAMPLES / "obama3.jpg"), "--key", str(ws / "other.key"),
                        "--gallery", str(e["db"]), *FAST])
    assert rc == 2 and out == "" and "obama" in err and "revoke" in err


@needs_models
def test_verify(enrolled, ws, tmp_path):
    """`verify alice probe.jpg --key alice.key --gallery gallery.db`: one JSON line; exit 0 = match, 1 = none."""
    db = _copy(enrolled["db"], tmp_path)
    argv = ["verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", str(ws / "alice.key"), "--gallery", db, *FAST]
    rc, out, _ = run(argv)
    res = json.loads(out)
    assert set(res) == {"person", "match", "score", "threshold", "key_fingerprint", "templates"}
    assert res["templates"] == 2 and res["key_fingerprint"] == enrolled["fp"] and rc == (0 if res["match"] else 1)
    rc, out, _ = run(argv + ["--threshold", "-1"])                 # every score passes: exit 0
    assert rc == 0 and json.loads(out)["match"] is True
    rc, out, _ = run(["verify", "nobody", str(SAMPLES / "obama3.jpg"), "--key", str(ws / "alice.key"),
                      "--gallery", db, *FAST])
    assert rc == 1 and json.loads(out) == {"person": "nobody", "match": False, "score": None,
                                           "reason": "no templates (not enrolled or revoked)"}


@needs_models
def test_revoke(enrolled, tmp_path):
    """`revoke alice --new-key alice2.key --gallery gallery.db`: says what is gone for good, writes the new key
    and tells how to re-enrol; revoking again is refused (exit 2) and says why."""
    db, new = _copy(enrolled["db"], tmp_path), tmp_path / "alice2.key"
    rc, out, err = run(["revoke", "obama", "--new-key", str(new), "--gallery", db, *FAST])
    assert rc == 0, err
    fp2 = read_key_file(new).fingerprint
    assert out.strip().splitlines() == [
        f"revoked 'obama': key {enrolled['fp']} can never be enrolled for them again; 2 template(s) deleted",
        f"new key {new} (fingerprint {fp2})",
        f"re-enrol with: faceanonymixer enrol obama PHOTOS --key {new}"]
    rc, out, err = run(["revoke", "obama", "--gallery", db])
    assert rc == 2 and out == "" and "already revoked" in err


@needs_models
def test_gallery(enrolled, tmp_path):
    """`gallery check --gallery gallery.db` (and `list`); a file that is not a gallery: exit 2 naming it."""
    db = _copy(enrolled["db"], tmp_path)
    rc, out, _ = run(["gallery", "check", "--gallery", db])
    assert rc == 0 and out.startswith(f"gallery {db}: ok (") and "1 person(s), 2 template(s)" in out
    rc, out, _ = run(["gallery", "list", "--gallery", db])
    assert rc == 0 and out.split()[:3] == ["obama", "key", enrolled["fp"]] and "2 template(s)" in out
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    rc, out, err = run(["gallery", "check", "--gallery", str(junk)])
    assert rc == 2 and out == "" and "junk.db" in err


# -- evaluate, model-report, calibrate -----------------------------------------------------------------------
@needs_models
def test_evaluate(ws, tmp_path, monkeypatch):
    """`evaluate --config configs/eval.yaml --max-people 100 --out report/`: without LFW the error names --data
    and $FACEANONYMIXER_LFW; on the tiny tree (key-less blur, SFace) it says which files it wrote where."""
    monkeypatch.delenv("FACEANONYMIXER_LFW", raising=False)
    config = str(ROOT / "configs" / "eval.yaml")
    rc, out, err = run(["evaluate", "--config", config, "--max-people", "100", "--out", str(tmp_path / "r0"),
                        "--set", "data=null"])
    assert rc == 2 and out == "" and "--data" in err and "FACEANONYMIXER_LFW" in err
    report = tmp_path / "report"
    rc, out, err = run(["evaluate", "--config", config, "--max-people", "100", "--out", str(report),
                        "--data", str(ws / "lfw" / "images"), "--set", "variants=[blur]", "--set", "main_variant=blur",
                        "--set", "recognisers=[sface]", "--set", "split=null", "--set", "n_impostor=1000",
                        "--set", "threads=1", "--set", "grid_people=2"])
    assert rc == 0, err
    assert out.strip() == (f"evaluated blur on 2 people, 5 images: wrote report.md, report.html, metrics.json and "
                           f"scores.csv to {report}")
    assert all((report / f).stat().st_size > 0 for f in ("report.md", "report.html", "metrics.json", "scores.csv"))


def test_model_report(tmp_path, monkeypatch):
    """`model-report --out runs/model_report` needs LFW's held-out people: without them the error says how to
    give them (the command itself runs end to end in test_models_report.py)."""
    monkeypatch.delenv("FACEANONYMIXER_LFW", raising=False)
    rc, out, err = run(["model-report", "--out", str(tmp_path / "model_report")])
    assert rc == 2 and out == "" and "--data" in err and "FACEANONYMIXER_LFW" in err
    assert not (tmp_path / "model_report").exists()


def test_calibrate(tmp_path):
    """`calibrate report/scores.csv --far 0.001`: the threshold as JSON; a missing file: exit 2 naming it."""
    p = tmp_path / "scores.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "kind", "item_a", "item_b", "recogniser", "score"])
        w.writerows(("method", "impostor", f"a{i}", f"b{i}", "sface", i / 2000) for i in range(2000))
        w.writerows(("method", "genuine", f"g{i}", f"h{i}", "sface", 0.9999) for i in range(10))
    rc, out, _ = run(["calibrate", str(p), "--far", "0.001"])
    res = json.loads(out)
    assert rc == 0 and res["far"] == 0.001 and res["n_impostor"] == 2000 and 0.998 < res["threshold"] <= 0.9995
    assert res["tar"] == 1.0
    rc, out, err = run(["calibrate", str(tmp_path / "missing.csv")])
    assert rc == 2 and out == "" and "missing.csv" in err


# -- serve, client -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`serve token add laptop --db ...` (its output kept for test_serve), then the server on that database."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    d = tmp_path_factory.mktemp("service")
    db = f"sqlite:///{d / 'service.db'}"
    rc, out, err = run(["serve", "token", "add", "laptop", "--role", "enrol", "--db", db])
    srv = ServerProcess(["--config", str(ROOT / "configs" / "serve.yaml"), "--db", db], d / "server.log")
    srv.db, srv.token_add = db, (rc, out, err)
    yield srv
    srv.stop()


@needs_models
def test_client(service, ws, monkeypatch):
    """`client enrol alice photos/alice --key alice.key --server URL` and `client verify ...` against the server
    (the photos are protected here); without a token the error says where it comes from."""
    token = service.token_add[1].strip().splitlines()[-1]
    monkeypatch.setenv("FACEANONYMIXER_TOKEN", token)
    key = str(ws / "alice.key")
    rc, out, err = run(["client", "enrol", "obama", str(ws / "photos" / "obama"), "--key", key,
                        "--server", service.url, *FAST])
    fp = read_key_file(key).fingerprint
    assert rc == 0, err
    assert out.strip() == f"enrolled 2 protected template(s) for 'obama' at {service.url} (key {fp})"
    rc, out, _ = run(["client", "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", key,
                      "--server", service.url, *FAST])
    res = json.loads(out)
    assert res["match"] in (True, False) and rc == (0 if res["match"] else 1)
    assert "score" not in res or res["score"] is None                  # reveal_score is off by default
    monkeypatch.delenv("FACEANONYMIXER_TOKEN")
    rc, out, err = run(["client", "status", "obama", "--server", service.url])
    assert rc == 2 and out == "" and "no API token" in err and "serve token add" in err


def test_serve(service):
    """`serve token add laptop --db ...` prints the token once (and says so); `serve --config configs/serve.yaml
    --db ...` logs where it listens and what it matches with, and on SIGTERM finishes what is in flight."""
    rc, out, err = service.token_add
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 2 and lines[0].startswith("API token for 'laptop', role enrol (shown once")
    assert len(lines[1]) >= 32 and " " not in lines[1]
    rc, out, _ = run(["serve", "token", "list", "--db", service.db])
    assert rc == 0 and out.strip() == "laptop\tenrol" and lines[1] not in out
    assert service.stop() in (0, -signal.SIGTERM)    # uvicorn re-raises the signal after its graceful shutdown
    log = service.log.read_text()
    events = [json.loads(ln) for ln in log.splitlines()]           # the log: JSON lines, never the token
    assert lines[1] not in log and f"Uvicorn running on http://127.0.0.1:{service.port}" in log
    ready = next(e for e in events if e.get("event") == "ready")
    assert ready["matcher"] == "sface" and ready["resolution"] == 64 and ready["threshold"] > 0.7
    assert [e["unfinished"] for e in events if e.get("event") == "shutdown"] == [0]
