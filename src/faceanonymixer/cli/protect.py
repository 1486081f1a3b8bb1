"""``faceanonymixer protect INPUT... --key K --out DIR``: protect a photo collection (batch.py: streamed,
atomic per person, resumable; OUT/<person>/<photo>.png + sidecar .json)."""
from __future__ import annotations

from pathlib import Path

from ..batch import MANIFEST, check_out, check_private_manifest, plan_people, protect_dataset
from ..distributed import RayEngineError, protect_dataset_ray, require_ray
from ..errors import ImageError
from ..fileio import shown
from ..pipeline import Protector
from .common import add_config, add_key, app_config, key_from_args, report_bad

HELP = "protect photos with a key: cancelable face images (PNG + sidecar JSON); resumable"


def add_arguments(p):
    p.add_argument("inputs", nargs="+", help="image files or folders (sub-folders = one person each)")
    p.add_argument("--out", required=True, help="output folder: OUT/<person>/<photo>.png + sidecar .json; must not "
                   "overlap an input")
    p.add_argument("--overwrite", action="store_true", help="replace person folders in OUT that this run did not "
                   "make (another key or config, or foreign files); without it they are never touched")
    p.add_argument("--resume", action="store_true", help="require OUT to hold an interrupted run to continue "
                   "(a re-run with the same key and config resumes anyway)")
    p.add_argument("--private-manifest", metavar="FILE", help="also write FILE (mode 0600, outside OUT) mapping each "
                   "output to its person and source photo; the sidecars never name them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where the work runs (which method protects is the config's protect.engine: "
                   "optimise|mixer). local: this process (default); ray: the plan's batches on a pool of Ray "
                   "workers, one loaded model each, bit-identical outputs (pip install 'faceanonymixer[ray]'; "
                   "docs/ray.md)")
    p.add_argument("--address", metavar="ADDR", help="--engine ray: the Ray cluster to use ('auto' = the one "
                   "running here, ray://HOST:PORT); default: start Ray on this machine for this run")
    p.add_argument("--workers", type=int, metavar="N", help="--engine ray: number of workers (default: one per GPU "
                   "when protect.models.device=cuda, else one per --worker-cpus CPUs of the cluster)")
    p.add_argument("--worker-cpus", type=int, default=1, metavar="N", help="--engine ray: CPUs (= torch threads) per "
                   "worker (default 1)")
    add_config(p)
    add_key(p)


def run(args) -> int:
    ray_engine = args.engine == "ray"
    if not ray_engine and (args.address or args.workers is not None or args.worker_cpus != 1):
        raise RayEngineError("--address, --workers and --worker-cpus are for --engine ray")
    if ray_engine:
        require_ray()                           # before anything else: say how to install it
    cfg = app_config(args)
    key = key_from_args(args)
    out = Path(args.out)
    units, bad = plan_people(args.inputs)
    if not units:
        report_bad(bad)
        raise ImageError("no person to protect: every input failed (listed above); nothing was written")
    check_private_manifest(args.private_manifest, out)
    made = [d for d in (out, *out.parents) if not d.exists()]   # folders this run creates (deepest first)
    check_out(out, args.inputs)                 # before loading any model: overlap, file, writable
    try:
        return _protect(args, cfg, key, out, units, bad, ray_engine)
    except BaseException:
        for d in made:                          # a run that fails before writing leaves no empty --out behind;
            try:                                # rmdir removes only empty folders, so nothing written is lost
                d.rmdir()
            except OSError:
                break
        raise


def _protect(args, cfg, key, out: Path, units, bad, ray_engine: bool) -> int:
    # `protect` keeps the paper's setting (no key anchor: that is for the workflow's lone probes)
    if ray_engine:              # the models load in the workers; args.protector_factory: Python callers, tests
        res = protect_dataset_ray(cfg.protect, units, key, out, make_protector=getattr(args, "protector_factory",
                                                                                       None),
                                  address=args.address, workers=args.workers, worker_cpus=args.worker_cpus,
                                  overwrite=args.overwrite, resume=args.resume,
                                  private_manifest=args.private_manifest, progress=not args.no_progress)
    else:
        prot = getattr(args, "protector", None) or Protector(cfg.protect)
        res = protect_dataset(prot, units, key, out, overwrite=args.overwrite, resume=args.resume,
                              private_manifest=args.private_manifest, progress=not args.no_progress)
    bad += res.failures
    print(f"key {key.fingerprint}: {len(res.written)} person(s), {res.images} image(s) written to {shown(out)}"
          + (f"; {len(res.skipped)} already done (resumed)" if res.skipped else "")
          + f"; manifest {shown(out / MANIFEST)}")
    return report_bad(bad)
