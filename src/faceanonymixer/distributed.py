"""Dataset-scale protection on Ray: ``faceanonymixer protect --engine ray`` (docs/ray.md).

The same run as ``batch.protect_dataset``, with the batches computed by a pool of Ray actors:

* **one loaded Protector per actor** (``ProtectWorker``), one actor per GPU when the config asks for ``cuda``, else
  one per ``worker_cpus`` CPUs of the cluster; each actor runs torch with ``worker_cpus`` threads;
* **the unit of work is one batch of the plan** (``batch.Job.batches``: ``batch_people`` people, a person's images
  together). The people of a batch are optimised jointly; mathematically they do not interact (the loss is a sum
  over people and Adam is element-wise), but batched kernels round differently for another batch composition,
  so the actors get exactly the local engine's batches and the outputs are bit-identical to it;
* **the actors only compute**: they return each person's PNG + sidecar bytes; this process (the driver) holds
  ``OUT``'s lock and does every write through ``batch.Job`` (atomic commit per person, one manifest line each), so
  a run started with one engine resumes with the other;
* **faults**: a killed actor is restarted by Ray and its unfinished batches are retried (``max_restarts``,
  ``max_task_retries``); a batch lost anyway is resubmitted by the driver (``retries``). A batch's result is
  committed once, when it arrives, so no person is written twice or half. A killed driver is a killed local
  run: re-running the command resumes;
* **the key**: its 32-byte secret travels to the actors inline in each task's arguments (Ray keeps arguments under
  100 KB in process memory; a ``ray.put`` object would sit in the shared-memory object store, which spills to
  disk under pressure), never in an actor's constructor (the cluster's control store keeps those for restarts),
  never in a log line, a file or a command line. Across machines it crosses the network: use Ray's TLS
  (``RAY_USE_TLS``) outside a trusted network.

Ray is optional (``pip install faceanonymixer[ray]``) and imported only here, only when this engine runs.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .batch import DatasetResult, Job, Unit
from .config import ConfigError, config_hash
from .errors import FaceAnonyMixerError
from .keys import Key
from .pipeline import person_files

log = logging.getLogger(__name__)

ACTOR_PREFIX = "faceanonymixer-protect"   # actors are named <prefix>-<run>-<i> (visible in `ray list actors`)


class RayEngineError(FaceAnonyMixerError):
    """The Ray engine cannot run (Ray missing, cluster too small, workers that cannot start)."""


def require_ray():
    """The ``ray`` module, or a message saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray, which is not installed: pip install 'faceanonymixer[ray]' "
                             "(or use --engine local)") from None
    return ray


@dataclass
class RayDatasetResult(DatasetResult):
    batches: dict[int, int] = field(default_factory=dict)  # plan batch index -> pid of the process that computed it
    resubmitted: int = 0                                    # batches the driver sent again after losing a worker
    workers: int = 0                                        # actors started
    startup_s: float = 0.0                                  # seconds until every actor had loaded its protector


class ProtectWorker:
    """One Ray actor: a loaded Protector that computes batches of the plan and returns bytes; never writes."""

    def __init__(self, make_protector, config, cfg_hash: str, threads: int):
        import torch
        torch.set_num_threads(threads)
        self.protector = make_protector(config)
        got = config_hash(self.protector.config)
        if got != cfg_hash:
            raise RayEngineError(f"the worker's protector has config {got}, the run {cfg_hash}: make_protector must "
                                 "build the Protector from the config it is given")

    def ready(self) -> dict:
        import torch
        return dict(pid=os.getpid(), device=str(self.protector.device), threads=torch.get_num_threads())

    def protect(self, index: int, people: list[list[Path]], names: list[str], todo: list[str],
                secret: bytes) -> dict:
        """Batch ``index`` of the plan (all its people, as the local engine optimises them), under the key whose
        secret is given; returns {index, pid, failures, results: [(name, files, sources, timings)]} for the people
        in ``todo``."""
        key = Key(secret)
        del secret
        br = self.protector.protect_people(people, key, names)
        want = set(todo)
        results = [(r.name, person_files(r, self.protector), r.sources, r.timings) for r in br.results
                   if r.name in want]
        return dict(index=index, pid=os.getpid(), failures=br.failures, results=results)


def _worker_plan(ray, config, workers: int | None, worker_cpus: int) -> tuple[int, float]:
    """(number of actors, GPUs per actor) for this cluster and config."""
    dev = str(config.models.device)
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    if dev.startswith("cuda"):
        if dev != "cuda":
            raise ConfigError(f"protect.models.device is '{dev}': with --engine ray every worker gets a GPU of its "
                              "own; use --set protect.models.device=cuda")
        if gpus < 1:
            raise RayEngineError("protect.models.device is cuda but the Ray cluster has no GPU; use "
                                 "--set protect.models.device=cpu or a cluster with GPUs")
        n = workers or gpus
        if n > gpus or n * worker_cpus > cpus:
            raise RayEngineError(f"{n} worker(s) of 1 GPU and {worker_cpus} CPU(s) each do not fit the Ray cluster "
                                 f"({gpus} GPU(s), {cpus} CPU(s)); pass fewer --workers or --worker-cpus")
        return n, 1.0
    n = workers or max(1, cpus // worker_cpus)
    if n * worker_cpus > cpus:
        raise RayEngineError(f"{n} worker(s) of {worker_cpus} CPU(s) do not fit the Ray cluster ({cpus} CPU(s)); "
                             "pass fewer --workers or --worker-cpus")
    return n, 0.0


def protect_dataset_ray(config, units: list[Unit], key: Key, out, *,
                        make_protector=None,          # config -> Protector, run in each actor (default: Protector)
                        address: str | None = None,   # Ray cluster; None = the initialised one, else a local Ray
                        workers: int | None = None,   # actors (default: one per GPU, else one per worker_cpus CPUs)
                        worker_cpus: int = 1,         # CPUs reserved per actor = its torch threads
                        overwrite: bool = False, resume: bool = False, private_manifest=None,
                        progress: bool = True,
                        retries: int = 3,             # driver resubmissions of a batch whose worker was lost
                        max_restarts: int = 4,        # Ray restarts of each actor
                        in_flight: int = 2) -> RayDatasetResult:   # batches queued per actor
    """Protect ``units`` under ``key`` into ``out`` on Ray; the guarantees of ``batch.protect_dataset``, and its
    outputs bit-for-bit (same config, key and plan). Every check happens before Ray is started."""
    ray = require_ray()
    if make_protector is None:
        from .pipeline import Protector as make_protector
    if worker_cpus < 1 or (workers is not None and workers < 1):
        raise RayEngineError("--workers and --worker-cpus must be at least 1")
    job = Job(config, units, key, out, overwrite=overwrite, resume=resume, private_manifest=private_manifest,
              progress=progress)
    started, actors = False, []
    try:
        todo = job.batches()
        if not todo:
            return RayDatasetResult(**vars(job.result))
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            started = True
        n, gpus = _worker_plan(ray, config, workers, worker_cpus)
        n = min(n, len(todo))
        cfg_hash, run_id, t0 = config_hash(config), uuid.uuid4().hex[:8], time.perf_counter()
        remote = ray.remote(ProtectWorker)
        actors = [remote.options(name=f"{ACTOR_PREFIX}-{run_id}-{i}", num_cpus=worker_cpus, num_gpus=gpus,
                                 max_restarts=max_restarts, max_task_retries=2)
                  .remote(make_protector, config, cfg_hash, worker_cpus) for i in range(n)]
        try:
            info = ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            raise RayEngineError(f"the Ray workers could not load the protector: {e}") from None
        log.info("%d Ray worker(s) ready: %s", n, ", ".join(f"pid {i['pid']} on {i['device']} ({i['threads']} "
                                                            "thread(s))" for i in info))
        startup = time.perf_counter() - t0
        res = _drive(ray, job, todo, actors, key, retries, max(1, in_flight))
        res.startup_s = round(startup, 3)
        return res
    finally:
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()
        job.close()


def _drive(ray, job: Job, todo, actors, key: Key, retries: int, in_flight: int) -> RayDatasetResult:
    """Keep every actor busy with the plan's batches (at most ``in_flight`` queued each) and commit each result
    as it arrives."""
    secret = key._secret      # noqa: SLF001 - inline in each task's arguments only (module docstring)
    pending = deque(todo)
    tries = {i: 0 for i, _, _ in todo}
    load = {a: 0 for a in range(len(actors))}
    running: dict = {}                               # ObjectRef -> (actor index, batch)
    served: dict[int, int] = {}
    resubmitted, last_error = 0, None
    while pending or running:
        while pending and load:
            a = min(load, key=load.get)
            if load[a] >= in_flight:
                break
            item = pending.popleft()
            index, chunk, names = item
            ref = actors[a].protect.remote(index, [u.images for u in chunk], [u.name for u in chunk],
                                           sorted(names), secret)
            running[ref] = (a, item)
            load[a] += 1
        if not running:
            raise RayEngineError(f"every Ray worker is gone ({last_error}); the people committed so far are kept: "
                                 "re-run the same command to resume")
        (ref,), _ = ray.wait(list(running), num_returns=1)
        a, item = running.pop(ref)
        if a in load:
            load[a] -= 1
        try:
            got = ray.get(ref)
        except ray.exceptions.RayTaskError as e:      # an error raised by the protector itself: stop here
            cause = getattr(e, "cause", None)
            if isinstance(cause, FaceAnonyMixerError):
                raise cause from None
            raise e.as_instanceof_cause() from None
        except ray.exceptions.RayError as e:          # the worker (or the node) died and Ray's retries ran out
            last_error = type(e).__name__
            if isinstance(e, ray.exceptions.ActorDiedError):
                load.pop(a, None)                     # restarts spent (or it never started): no more work for it
            tries[item[0]] += 1
            if tries[item[0]] > retries:
                raise RayEngineError(f"batch {item[0]} of the plan was lost {tries[item[0]]} times ({last_error}); "
                                     "the people committed so far are kept: re-run the same command to "
                                     "resume") from None
            log.warning("batch %d: worker lost (%s); sending it again", item[0], last_error)
            resubmitted += 1
            pending.appendleft(item)
            continue
        _, _, names = item
        job.result.failures += got["failures"]
        n_img = 0
        for name, files, sources, timings in got["results"]:
            if name in names and job.states.get(name) != "done":
                job.commit(name, files, sources, timings)
                n_img += len(sources)
        job.batch_done(len(names), n_img)
        served[got["index"]] = got["pid"]
    return RayDatasetResult(**vars(job.result), batches=served, resubmitted=resubmitted, workers=len(actors))
