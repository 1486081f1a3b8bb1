"""People per second of ``protect`` with the local engine and with ``--engine ray`` on 1 and 2 workers, measured in
one run on the same photos, config and key, and a check that the three output folders are byte-identical.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_ray.py [--people 16] [--batch-people 4]
        [--steps 10] [--workers 1,2] [--config FILE] [--tiny] [--samples]

Photos: the first ``--people`` LFW people with at least ``--images`` photos (``FACEANONYMIXER_LFW``; the largest
face of each photo), else (or with ``--samples``) the installed sample photos, copied into ``--people`` folders.
Every process runs torch with one thread (the local engine too: the same work per core). The Ray cluster
(``--cpus`` CPUs, started here) is up before the Ray timings; "wall" includes loading the models (the local
engine's protector, the workers' start); "compute" is the protection alone (the Ray engine's from the moment every
worker is ready). Parallelism is per batch of the plan: ``people / batch_people`` batches, so more workers than
batches idle.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def photos(people: int, images: int, use_samples: bool, dest: Path) -> str:
    """Fill ``dest`` with one folder per person; returns where the photos came from."""
    from faceanonymixer.registry import data_dir
    lfw = os.environ.get("FACEANONYMIXER_LFW")
    if lfw and not use_samples and (Path(lfw) / "images").is_dir():
        got = 0
        for d in sorted((Path(lfw) / "images").iterdir()):
            imgs = sorted(d.glob("*.jpg"))[:images]
            if d.is_dir() and len(imgs) >= images:
                (dest / d.name).mkdir(parents=True)
                for p in imgs:
                    shutil.copy(p, dest / d.name / p.name)
                got += 1
                if got == people:
                    return f"LFW ({lfw}), {images} photos each"
        raise SystemExit(f"LFW has only {got} people with {images} photos")
    samples = data_dir() / "samples"
    names = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
    for i in range(people):
        (dest / f"p{i:03d}").mkdir(parents=True)
        for j in range(images):
            shutil.copy(samples / names[(i + j) % 4], dest / f"p{i:03d}" / f"p{i:03d}_{j}.jpg")
    return f"the sample photos ({samples}), {images} each"


def make_tiny(cfg):
    """tests/_tiny.py's random 32-px protector under ``cfg`` (for a quick check of the mechanics)."""
    from _tiny import tiny_protector
    from faceanonymixer.pipeline import Protector
    p = tiny_protector(cfg.optim.steps, cfg.batch_people, cfg.optim.augment_copies)
    return Protector(cfg, generator=p.generator, inverter=p.inverter)


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.suffix in (".png", ".json")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--images", type=int, default=2, help="photos per person")
    ap.add_argument("--batch-people", type=int, default=4, help="protect.batch_people (people per batch)")
    ap.add_argument("--steps", type=int, default=10, help="protect.optim.steps")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time, comma-separated")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--config", help="YAML config (default: built-in defaults)")
    ap.add_argument("--tiny", action="store_true", help="tests/_tiny.py's random 32-px models instead of the config's")
    ap.add_argument("--samples", action="store_true", help="the sample photos even when LFW is available")
    a = ap.parse_args()

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])   # for the workers
    sys.path.insert(0, str(ROOT / "tests"))
    import ray
    import torch
    from faceanonymixer.batch import plan_people, protect_dataset
    from faceanonymixer.distributed import protect_dataset_ray
    from faceanonymixer.keys import Key
    from faceanonymixer.pipeline import Protector
    from faceanonymixer.workflow import load_config
    torch.set_num_threads(1)
    make = make_tiny if a.tiny else Protector
    key = Key.generate()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray."))
    try:
        src = photos(a.people, a.images, a.samples, tmp / "in")
        sets = [f"protect.optim.steps={a.steps}", f"protect.batch_people={a.batch_people}"]
        if src.startswith("LFW"):
            sets.append("protect.face=largest")             # LFW photos may show several faces; its person's is largest
        cfg = load_config(a.config, sets).protect
        units, _ = plan_people([str(tmp / "in")])
        n_batches = -(-len(units) // a.batch_people)
        print(f"{len(units)} people from {src}; batch_people {a.batch_people} ({n_batches} batches), {a.steps} steps, "
              f"{'tiny 32-px models' if a.tiny else cfg.models.generator}; torch {torch.__version__}, 1 thread per "
              f"process; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        rows = []
        t0 = time.perf_counter()
        prot = make(cfg)
        t1 = time.perf_counter()
        r = protect_dataset(prot, units, key, tmp / "local", progress=False)
        t2 = time.perf_counter()
        rows.append(("local (1 process)", len(r.written), t2 - t0, t2 - t1))
        del prot
        ray.init(num_cpus=a.cpus, include_dashboard=False, object_store_memory=200 * 2 ** 20,
                 logging_level="WARNING")
        try:
            for w in (int(x) for x in a.workers.split(",")):
                t0 = time.perf_counter()
                r = protect_dataset_ray(cfg, units, key, tmp / f"ray{w}", make_protector=make, workers=w,
                                        progress=False)
                wall = time.perf_counter() - t0
                rows.append((f"ray, {w} worker(s)", len(r.written), wall, wall - r.startup_s))
        finally:
            ray.shutdown()
        ref = outputs(tmp / "local")
        same = all(outputs(tmp / f"ray{w}") == ref for w in (int(x) for x in a.workers.split(",")))
        print("\n| engine | people | wall s | people/s (wall) | compute s | people/s (compute) |\n"
              "|---|---|---|---|---|---|")
        for name, n, wall, comp in rows:
            print(f"| {name} | {n} | {wall:.1f} | {n / wall:.3f} | {comp:.1f} | {n / comp:.3f} |")
        print(f"\noutputs byte-identical to the local engine's ({len(ref)} files): {'yes' if same else 'NO'}; "
              f"load average {os.getloadavg()[0]:.1f} at the end")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
