"""Bounded load test of the verification service on loopback: a real `faceanonymixer serve` (uvicorn in a
subprocess, the configured matcher and generator profile, SQLite unless --db) and the real Python ``Client``.

1. protects the sample photos once, locally, with the workflow protector (real protected 64-px faces);
2. enrols ``--people`` distinct person ids (one key fingerprint each, ``--images`` templates each) from
   ``--clients`` concurrent clients, then sends every enrolment a second time (a client retry), concurrently;
3. sends ``--requests`` verify requests from ``--clients`` concurrent clients (fixed count; stops by itself);
4. checks: no error, every person enrolled exactly once with exactly ``--images`` templates (nothing lost, nothing
   duplicated), the retries stored nothing; prints p50/p95 latency and throughput as one JSON line.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py [--requests 200] [--clients 8]
        [--people 32] [--images 2] [--steps 20] [--db postgresql://USER@/DB?host=/SOCKET/DIR&port=N]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from faceanonymixer.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def protected_pngs(steps: int) -> tuple[list[bytes], int]:
    """The sample photos protected once under one key (the client side's work, not measured)."""
    from faceanonymixer.keys import Key
    from faceanonymixer.pipeline import png_bytes
    from faceanonymixer.registry import data_dir
    from faceanonymixer.workflow import load_config, protect_enrolment, workflow_protector
    cfg = load_config(None, [f"protect.optim.steps={steps}"])
    prot = workflow_protector(cfg)
    samples = data_dir() / "samples"
    photos = [samples / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
    e = protect_enrolment(prot, cfg, Key.generate(), "bench", photos)
    return [png_bytes(im) for im in e.images], prot.resolution


def run_threads(n: int, work, jobs: list) -> tuple[list, float]:
    """``work(client_index, job)`` over ``jobs`` from ``n`` threads; (results in job order, wall seconds)."""
    out, nxt, lock = [None] * len(jobs), [0], threading.Lock()

    def loop(i):
        while True:
            with lock:
                j = nxt[0]
                nxt[0] += 1
            if j >= len(jobs):
                return
            out[j] = work(i, jobs[j])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="verify requests")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--people", type=int, default=32, help="distinct people enrolled concurrently")
    ap.add_argument("--images", type=int, default=2, help="templates per person")
    ap.add_argument("--steps", type=int, default=20, help="protection steps for the sample photos (not measured)")
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary folder)")
    ap.add_argument("--config", help="service YAML (default: built-in defaults = configs/serve.yaml)")
    a = ap.parse_args()
    torch.set_num_threads(1)

    from faceanonymixer.keys import Key
    from faceanonymixer.service.client import Client
    from faceanonymixer.service.errors import ApiError
    from faceanonymixer.gallery import Gallery

    pngs, side = protected_pngs(a.steps)
    tmp = Path(tempfile.mkdtemp(prefix="fam-bench-"))
    db = a.db or f"sqlite:///{tmp / 'service.db'}"
    with Gallery(db, create=True) as st:
        token = st.add_token(f"bench-{os.getpid()}", role="admin")
    port = free_port()
    argv = [sys.executable, "-c", MAIN, "serve", "--db", db, "--port", str(port),
            "--set", "limits.rate=100000", "--set", "limits.burst=100000"]   # measure the service, not the limiter
    if a.config:
        argv += ["--config", a.config]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + sys.path))
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"server exited:\n{(tmp / 'server.log').read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        clients = [Client(url, token) for _ in range(a.clients)]
        info = clients[0].info()
        assert info["resolution"] == side, (info, side)

        errors: list[str] = []

        def call(fn):
            t0 = time.perf_counter()
            try:
                return fn(), time.perf_counter() - t0
            except (ApiError, Exception) as e:  # noqa: BLE001 - every failure is counted and shown
                errors.append(f"{type(e).__name__}: {e}")
                return None, time.perf_counter() - t0

        people = [(f"person-{i:04d}", Key.generate().fingerprint,
                   [pngs[(i + j) % len(pngs)] for j in range(a.images)]) for i in range(a.people)]
        enrolled, t_enrol = run_threads(a.clients, lambda c, p: call(lambda: clients[c].enrol_pngs(*p)), people)
        retried, _ = run_threads(a.clients, lambda c, p: call(lambda: clients[c].enrol_pngs(*p)), people)
        jobs = [(people[i % a.people][0], people[i % a.people][1], pngs[i % len(pngs)]) for i in range(a.requests)]
        verified, t_verify = run_threads(a.clients, lambda c, j: call(lambda: clients[c].verify_png(*j)), jobs)

        lost = [p for p, fp_, _ in people
                if (lambda d: not d["enrolled"] or d["key_fingerprint"] != fp_ or d["templates"] != a.images)(
                    clients[0].person(p))]
        with Gallery(db) as st:
            stats = st.stats()
        lat = np.array([t for r, t in verified if r is not None]) * 1000
        out = dict(
            db=Gallery(db).url.get_backend_name(), matcher=info["matcher"], resolution=side,
            clients=a.clients, verify_requests=a.requests, verify_ok=int(sum(r is not None for r, _ in verified)),
            verify_p50_ms=round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            verify_p95_ms=round(float(np.percentile(lat, 95)), 1) if lat.size else None,
            verify_per_s=round(a.requests / t_verify, 1),
            matches=int(sum(bool(r and r["match"]) for r, _ in verified)),
            enrol_people=a.people, enrol_per_s=round(a.people / t_enrol, 1),
            enrol_stored=int(sum(r["stored"] for r, _ in enrolled if r)),
            retry_stored=int(sum(r["stored"] for r, _ in retried if r)),
            gallery=stats, lost_or_wrong=len(lost), errors=len(errors))
        print(json.dumps(out))
        for e in errors[:5]:
            print("error:", e, file=sys.stderr)
        ok = (not errors and not lost and out["enrol_stored"] == a.people * a.images and out["retry_stored"] == 0
              and stats["people"] == a.people and stats["templates"] == a.people * a.images)
        print("OK: no errors, no lost or duplicated enrolments" if ok else "FAILED", file=sys.stderr)
        for c in clients:
            c.close()
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
