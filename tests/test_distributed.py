"""``protect --engine ray`` (distributed.py) on a local 2-CPU Ray cluster, with the tiny real protector of the
reliability tests: outputs byte-equal to the local engine, workers killed mid-run (SIGKILL and ray.kill) without
a lost, duplicated or torn person, a run resumed across engines, the key absent from Ray's files, and the message
when Ray is not installed."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from _tiny import run_cli, tiny_protector
from faceanonymixer import cli
from faceanonymixer.batch import MANIFEST, plan_people, protect_dataset
from faceanonymixer.keys import Key, write_key_file
from faceanonymixer.pipeline import Protector
from faceanonymixer.registry import data_dir
from faceanonymixer.workflow import load_config

SAMPLES = data_dir() / "samples"
ROOT = Path(__file__).resolve().parents[1]
# tests/_tiny.py's protector with 5 steps: enough for another batch composition to change the PNG bytes (measured:
# batches of 1 or 8 people instead of the plan's 2 change 2 resp. 8 of the 12 PNGs; with 1 step none), so byte
# equality shows that the Ray engine optimised exactly the plan's batches
SETS = ["protect.optim.steps=5", "protect.optim.augment_copies=1", "protect.batch_people=2"]
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (SAMPLES / "obama.jpg").is_file(), reason=f"sample photos not installed in "
                                 f"{SAMPLES} (make install)")]


def make_tiny(cfg) -> Protector:
    """The tiny protector of tests/_tiny.py under ``cfg`` (run in each Ray worker; the same for the local run)."""
    p = tiny_protector(cfg.optim.steps, cfg.batch_people, cfg.optim.augment_copies)
    return Protector(cfg, generator=p.generator, inverter=p.inverter)


def config():
    return load_config(None, SETS).protect


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """8 people, 1 or 2 photos each (12 photos), as in the reliability tests' kill test."""
    import shutil
    root = tmp_path_factory.mktemp("in") / "people"
    photos = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
    for i in range(8):
        (root / f"p{i}").mkdir(parents=True)
        for j, ph in enumerate([photos[i % 4], photos[(i + 1) % 4]][: 1 + i % 2]):
            shutil.copy(SAMPLES / ph, root / f"p{i}" / f"p{i}_{j}.jpg")
    return root


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> tuple[Key, str]:
    """A random key (its secret is searched for in Ray's files) and its key file."""
    path = tmp_path_factory.mktemp("key") / "k.key"
    return write_key_file(path), str(path)


@pytest.fixture(scope="module")
def reference(people, key, tmp_path_factory) -> Path:
    """The local engine's outputs (the reference the Ray engine must equal byte for byte)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    units, _ = plan_people([str(people)])
    protect_dataset(make_tiny(config()), units, key[0], out, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, small object store, no dashboard, no usage report; its workers import
    faceanonymixer and tests/_tiny.py from this checkout."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'faceanonymixer[ray]')")
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "PYTHONPATH")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]
                                               + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2 ** 20, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST}


def check_manifest(out: Path, n: int) -> None:
    """One line per person, no duplicate, each naming the sha256 of the files on disk; complete pairs only."""
    lines = (out / MANIFEST).read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[0])["format"] == "faceanonymixer-run"
    recs = [json.loads(ln) for ln in lines[1:-1]]
    assert sorted(r["person"] for r in recs) == [f"p{i}" for i in range(n)]
    for r in recs:
        on_disk = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (out / r["person"]).iterdir()}
        assert r["files"] == on_disk, r["person"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".faceanonymixer.lock"]


def worker_pids() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::ProtectWorker"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def assert_secret_not_in_ray_files(ray, key: Key) -> None:
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    secret = key._secret
    needles = (secret, secret.hex().encode(), secret.hex().upper().encode())
    n = 0
    for p in session.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            n += 1
            assert not any(s in data for s in needles), f"the key's secret is in {p}"
    assert n > 5, f"no Ray files found in {session}"


@pytest.mark.numerics   # determinism / recorded numbers: .ci/run reruns it on other CPUs' kernels
def test_ray_engine_is_bit_identical_and_survives_killed_workers(ray_cluster, people, key, reference, tmp_path):
    from faceanonymixer.distributed import protect_dataset_ray
    ray, out = ray_cluster, tmp_path / "out"
    units, _ = plan_people([str(people)])
    box = {}

    def drive():
        try:
            box["res"] = protect_dataset_ray(config(), units, key[0], out, make_protector=make_tiny, workers=2,
                                             progress=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            box["err"] = e
    th = threading.Thread(target=drive)
    th.start()
    seen, t0 = set(), time.monotonic()
    while not ((out / MANIFEST).is_file() and len((out / MANIFEST).read_bytes().splitlines()) >= 2):
        seen |= worker_pids()
        assert th.is_alive() and time.monotonic() - t0 < 180, box
        time.sleep(0.01)
    done_at_kill = len((out / MANIFEST).read_bytes().splitlines()) - 1
    first = worker_pids()
    assert len(first) == 2
    os.kill(min(first), signal.SIGKILL)                                 # a worker process dies (OOM killer, crash)
    for name in ray.util.list_named_actors():                           # and every actor is killed through Ray
        if name.startswith("faceanonymixer-protect-"):
            ray.kill(ray.get_actor(name), no_restart=False)
    while th.is_alive():
        seen |= worker_pids()
        time.sleep(0.05)
    th.join()
    assert "err" not in box, box.get("err")
    res = box["res"]
    assert done_at_kill < 8                                             # the kills came mid-run
    assert sorted(res.written) == [f"p{i}" for i in range(8)] and res.images == 12 and not res.failures
    assert set(res.batches) == {0, 1, 2, 3}
    assert set(res.batches.values()) - (seen & first), "no batch was computed by a restarted worker"
    check_manifest(out, 8)
    assert outputs(out) == outputs(reference)                           # byte for byte, sidecars included
    assert_secret_not_in_ray_files(ray, key[0])


def test_cli_ray_engine_resumes_a_local_run(ray_cluster, people, key, reference, tmp_path, capsys):
    """A local run stopped after some people is finished by --engine ray, bit-identically; the people done are not
    redone, and a finished person's batch-mate is recomputed in the same batch as the plan's."""
    import shutil
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for p in ("p4", "p5", "p7"):                  # a crash before these were committed (the manifest names them)
        shutil.rmtree(out / p)
    args = cli.build_parser().parse_args(["protect", str(people), "--key", key[1], "--out", str(out), "--no-progress",
                                          "--engine", "ray", "--workers", "2"] + sum((["--set", s] for s in SETS), []))
    args.protector_factory = make_tiny
    assert args._run(args) == 0
    o = capsys.readouterr().out
    assert "3 person(s), 5 image(s) written" in o and "5 already done (resumed)" in o, o
    assert outputs(out) == outputs(reference)
    lines = (out / MANIFEST).read_bytes().splitlines()
    assert len(lines) == 1 + 8 + 3                # appended: one line per person committed by the resume
    assert_secret_not_in_ray_files(ray_cluster, key[0])


def test_without_ray_a_clear_message_and_nothing_written(people, key, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)                       # `import ray` fails as if not installed
    out = tmp_path / "out"
    assert run_cli(["protect", str(people), "--key", key[1], "--out", str(out), "--engine", "ray"]) == 2
    assert "pip install 'faceanonymixer[ray]'" in capsys.readouterr().out and not out.exists()
    assert run_cli(["protect", str(people), "--key", key[1], "--out", str(out), "--workers", "2"]) == 2
    assert "are for --engine ray" in capsys.readouterr().out and not out.exists()
