"""Protecting a photo collection safely: plan, stream, commit atomically, resume.

``protect_dataset(protector, units, key, out)`` is what ``faceanonymixer protect`` runs:

* **plan** (``plan_people``): every input becomes people (a folder of images = one person, a folder of
  sub-folders = one person each, loose files = one person); a bad input is listed and the rest go on; two inputs
  that would write the same ``OUT/<person>/`` are refused up front, never silently overwritten;
* **check before work** (``check_out``): ``--out`` must not overlap an input (originals are never written over),
  must be a writable folder, and may not already hold outputs of another key/config or foreign folders unless
  ``overwrite``; every conflict is listed before the first second of computation;
* **stream**: people are protected ``batch_people`` at a time and written as they finish, so memory does not grow
  with the collection and a crash loses at most one batch;
* **commit a person atomically**: the person's PNG + sidecar pairs are written into a hidden staging folder,
  fsynced, then renamed to ``OUT/<person>/`` (a rename is atomic): a kill at any instant leaves either the
  complete folder or none; the run manifest ``OUT/faceanonymixer-run.json`` (key fingerprint, config hash, the
  people done with each file's sha256) is then rewritten atomically;
* **resume**: a re-run with the same key and config skips the people done (a folder committed just before a
  crash, not yet in the manifest, is recognised from its sidecars); the batches are the same as in an
  uninterrupted run, so the outputs are bit-identical;
* one writer at a time: ``OUT/.faceanonymixer.lock`` (flock).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .config import config_hash
from .errors import FaceAnonyMixerError, ImageError
from .fileio import atomic_write, shown
from .images import list_images
from .keys import Key
from .pipeline import output_stems, person_files

log = logging.getLogger(__name__)

MANIFEST = "faceanonymixer-run.jsonl"
LOCK = ".faceanonymixer.lock"
_STAGING, _REPLACED = ".fam-staging.", ".fam-replaced."


class OutputError(FaceAnonyMixerError):
    """The output folder cannot be used as asked (overlap, conflict, not writable)."""


@dataclass
class Unit:
    """One person to protect: their images, written to ``OUT/<name>/``."""
    name: str
    images: list[Path]
    origin: str                    # the input it came from (for messages)


# -- plan --------------------------------------------------------------------------------------------------
def _safe_name(name: str) -> str:
    return "person" if name in ("", ".", "..") else name


def _reserved(name: str) -> bool:
    """Names a person folder cannot have: hidden ones (our staging folders are hidden) and our own files."""
    return name.startswith(".") or name in (MANIFEST, LOCK)


def plan_people(inputs: list[str]) -> tuple[list[Unit], list[tuple[str, str]]]:
    """Units from CLI inputs, plus (item, message) for inputs that give none. A folder that fails (empty,
    unreadable) is listed and skipped; the others go on. Two inputs that map to one person folder: the second
    is refused (its outputs would overwrite the first's)."""
    units: list[Unit] = []
    loose: list[Path] = []
    bad: list[tuple[str, str]] = []

    def add_folder(d: Path, name: str, allow_subs_only: bool = False):
        try:
            imgs = list_images(d, allow_empty=True)
        except (ImageError, OSError) as e:
            bad.append((str(d), str(e) if isinstance(e, ImageError) else f"{shown(d)}: cannot be read ({e.strerror})"))
            return
        if imgs:
            units.append(Unit(_safe_name(name), imgs, str(d)))
        elif not allow_subs_only:
            bad.append((str(d), "no images in this folder; skipped"))

    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            try:
                subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            except OSError as e:
                bad.append((inp, f"cannot be read ({e.strerror})"))
                continue
            for d in subs:
                add_folder(d, d.name)
            add_folder(p, p.name, allow_subs_only=bool(subs))
        elif p.exists() or p.is_symlink():
            loose.append(p)
        else:
            bad.append((inp, "no such file or folder. Check the path."))
    if loose:
        units.append(Unit(_safe_name(loose[0].parent.name), loose, "the files given"))
    seen: dict[str, Unit] = {}
    kept = []
    for u in units:
        if _reserved(u.name):
            bad.append((u.origin, f"'{shown(u.name)}' cannot be a person folder name (hidden, or "
                                  "the name of the run manifest); rename it"))
            continue
        if u.name in seen:
            bad.append((u.origin, f"its person folder '{shown(u.name)}' is also made from "
                                  f"{shown(seen[u.name].origin)}; both would write OUT/{shown(u.name)}/. Protect them "
                                  "into separate --out folders (or rename one)."))
            continue
        seen[u.name] = u
        kept.append(u)
    return kept, bad


def check_out(out: Path, inputs: list[str]) -> None:
    """Refuse an --out that is a file, unwritable, or overlaps an input (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {shown(out)} is an existing file, not a folder; give a folder path")
    o = out.resolve()
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            continue
        r = p.resolve()
        d = r if p.is_dir() else r.parent
        inside_input = p.is_dir() and (o == d or d in o.parents)
        if inside_input or o == d or o in r.parents:
            raise OutputError(f"--out {shown(out)} overlaps the input {shown(inp)}: outputs would be written among "
                              "the originals (or be read back as inputs). Choose an --out folder outside every "
                              "input; nothing was written.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fam-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"--out {shown(out)} cannot be written ({e.strerror}); choose a writable folder. "
                          "Nothing was computed.") from None


# -- manifest and commits ----------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def inputs_digest(key: Key, unit: Unit) -> str:
    """What a person's outputs were made from: a keyed hash (HMAC under the key) of each photo's name and content,
    so that a re-run notices changed, added or removed photos, while the manifest reveals nothing to whoever lacks
    the key (a plain hash of the originals would let anyone holding a photo test whether it is in the set)."""
    h = hmac.new(key.derive("faceanonymixer/run-inputs/v1"), digestmod=hashlib.sha256)
    for p in unit.images:
        h.update(p.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            if p.is_file():
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
        except OSError:
            h.update(b"\0unreadable")
        h.update(b"\0")
    return h.hexdigest()[:32]


class Run:
    """The output folder of one protection run: its lock, its manifest (JSON lines: a header naming the key
    fingerprint and config hash, then one line appended per committed person, so a commit costs one small append
    whatever the size of the collection) and the atomic commit of each person."""

    def __init__(self, out: Path, key_fingerprint: str, cfg_hash: str, overwrite: bool, resume: bool):
        self.out, self.fp, self.cfg_hash, self.overwrite = out, key_fingerprint, cfg_hash, overwrite
        self._lock = open(out / LOCK, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another faceanonymixer protect is writing to {shown(out)}; wait for it or "
                                  "choose another --out") from None
            raise
        for p in out.iterdir():          # leftovers of an interrupted commit or manifest write (ours by name)
            if p.name.startswith((_STAGING, _REPLACED)) or (p.name.startswith(f".{MANIFEST}.")
                                                              and p.name.endswith(".tmp")):
                _remove(p)
        self.people: dict[str, dict] = {}
        self.other_run: set[str] = set()  # people of another run's manifest (with --overwrite)
        self.fresh = True                 # the manifest must be (re)started with this run's header
        mpath = out / MANIFEST
        if mpath.exists() or mpath.is_symlink():
            header, people = _read_manifest(mpath)
            if header.get("key_fingerprint") == self.fp and header.get("config_hash") == self.cfg_hash:
                self.people, self.fresh = people, False
            elif not overwrite:
                raise OutputError(
                    f"{shown(out)} holds the outputs of another run (key {header.get('key_fingerprint')}, config "
                    f"{header.get('config_hash')}; this run: key {self.fp}, config {self.cfg_hash}). Outputs of two "
                    "keys or configs must not mix: choose another --out, or pass --overwrite to replace that run's "
                    "outputs (all of its people must then be in this run).")
            else:
                self.other_run = set(people)
        elif resume:
            raise OutputError(f"--resume: {shown(out)} holds no run manifest ({MANIFEST}); nothing to resume")

    def close(self):
        self._lock.close()

    # what is already there
    def _pairs(self, d: Path) -> tuple[dict[str, bytes], bool] | None:
        """(files, ours) when ``d`` is an output folder of faceanonymixer (only PNG + sidecar pairs, each sidecar
        of our format naming its PNG's sha256); ``ours``: every sidecar has this run's key and config. None for
        anything else (a folder a person made, with anything else in it)."""
        try:
            entries = list(d.iterdir())
            if any(not p.is_file() or p.is_symlink() for p in entries):
                return None
            files = {p.name: p.read_bytes() for p in entries}
        except OSError:
            return None
        pngs = [n for n in files if n.endswith(".png")]
        if not pngs or len(files) != 2 * len(pngs):
            return None
        ours = True
        for n in pngs:
            j = files.get(n[:-4] + ".json")
            try:
                side = json.loads(j) if j is not None else None
            except ValueError:
                return None
            if not isinstance(side, dict) or side.get("format") != "faceanonymixer-protected" \
                    or side.get("image_sha256") != _sha(files[n]):
                return None
            ours = ours and side.get("key_fingerprint") == self.fp and side.get("config_hash") == self.cfg_hash
        return files, ours

    def status(self, name: str, digest: str) -> tuple[str, str]:
        """('done' | 'todo' | 'replace' | 'conflict', why). 'replace' only with --overwrite, and only for output
        folders of faceanonymixer; a folder with anything else in it is never deleted."""
        d = self.out / name
        if not (d.exists() or d.is_symlink()):
            self.people.pop(name, None)
            return "todo", ""
        found = self._pairs(d) if d.is_dir() and not d.is_symlink() else None
        if found is None:
            return "conflict", "is not a faceanonymixer output folder (it is never deleted, even with --overwrite)"
        files, ours = found
        rec = self.people.get(name)
        shas = {n: _sha(b) for n, b in sorted(files.items())}
        if ours and (rec is None or (rec.get("files") == shas and rec.get("inputs") == digest)):
            if rec is None:        # committed just before a crash, not yet in the manifest: adopt it
                self.people[name] = dict(files=shas, inputs=digest)
                self._append(name, self.people[name])
            return "done", ""
        why = ("was made from other photos (changed, added or removed since)" if ours and rec is not None
               and rec.get("files") == shas else "holds outputs of another run (key or config) or was modified")
        return ("replace" if self.overwrite else "conflict"), why

    def commit(self, name: str, files: dict[str, bytes], extra: dict) -> None:
        stage = self.out / f"{_STAGING}{name}.{os.getpid()}"
        stage.mkdir()
        for fname, data in files.items():
            with open(stage / fname, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(stage)
        final, aside = self.out / name, None
        if final.exists() or final.is_symlink():
            aside = self.out / f"{_REPLACED}{name}.{os.getpid()}"
            os.rename(final, aside)
        os.rename(stage, final)
        _fsync_dir(self.out)
        if aside is not None:
            _remove(aside)
        self.people[name] = dict(files={n: _sha(b) for n, b in sorted(files.items())}, **extra)
        self._append(name, self.people[name])

    def start(self) -> None:
        """Write this run's manifest header (a new run, or --overwrite of another run's folder)."""
        if self.fresh:
            header = dict(format="faceanonymixer-run", version=2, key_fingerprint=self.fp, config_hash=self.cfg_hash)
            atomic_write(self.out / MANIFEST, lambda f: f.write(json.dumps(header).encode() + b"\n"))
            for name, rec in self.people.items():    # folders adopted before the header existed
                self._append(name, rec)
            self.fresh = False

    def _append(self, name: str, rec: dict) -> None:
        if self.fresh:
            return                                   # start() writes them
        with open(self.out / MANIFEST, "ab") as f:
            f.write(json.dumps(dict(person=name, **rec), sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())


def _read_manifest(path: Path) -> tuple[dict, dict[str, dict]]:
    """(header, {person: record}) of a run manifest. A torn last line (a crash mid-append) is cut off the file so
    that the next append starts on a line of its own."""
    damaged = OutputError(f"{shown(path)} is damaged or not a faceanonymixer run manifest. Move it away (the "
                          "person folders stay and are checked file by file) or choose another --out.")
    try:
        lines = path.read_bytes().split(b"\n")
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        raise damaged from None
    if not isinstance(header, dict) or header.get("format") != "faceanonymixer-run":
        raise damaged
    people: dict[str, dict] = {}
    torn = bool(lines[-1].strip())                   # no newline at the end: an append was interrupted
    body = [ln for ln in lines[1:] if ln.strip()]
    for i, ln in enumerate(body):
        try:
            rec = json.loads(ln)
            assert isinstance(rec, dict) and isinstance(rec.get("person"), str) \
                and isinstance(rec.get("files"), dict) and all(isinstance(v, str) for v in rec["files"].values())
        except (ValueError, AssertionError):
            if i == len(body) - 1 and torn:
                break
            raise damaged from None
        people[rec.pop("person")] = rec
    if torn:
        with open(path, "r+b") as f:
            f.truncate(sum(len(ln) + 1 for ln in lines[:-1]))
    return header, people


# -- the run -----------------------------------------------------------------------------------------------
@dataclass
class DatasetResult:
    written: list[str]             # people written by this call
    skipped: list[str]             # people already done (resumed)
    images: int                    # images written by this call
    failures: list[tuple[str, str]]


class Job:
    """The bookkeeping of one protection run, shared by the engines (here, and ``distributed.py`` on Ray): every
    check before any work, the plan's batches, and the atomic commit of each finished person (the engine only
    computes). Holds the output folder's lock until ``close()``."""

    def __init__(self, config, units: list[Unit], key: Key, out, *,
                 overwrite: bool = False,            # replace faceanonymixer outputs of another run / other photos
                 resume: bool = False,               # require a run manifest to continue
                 private_manifest=None,              # optional JSON-lines file (outside out), mode 0600
                 progress: bool = True):             # a progress bar on stderr
        out = Path(out)
        self.out, self.units = out, units
        self.pm = check_private_manifest(private_manifest, out)
        check_out(out, [str(p) for u in units for p in u.images])   # no output among the photos; writable
        self.run = Run(out, key.fingerprint, config_hash(config), overwrite, resume)
        try:
            self.digests = {u.name: inputs_digest(key, u) for u in units}
            states = {u.name: self.run.status(u.name, self.digests[u.name]) for u in units}
            conflicts = [(u.name, states[u.name][1]) for u in units if states[u.name][0] == "conflict"]
            left = sorted(self.run.other_run - set(states))
            if left:
                raise OutputError(f"--overwrite would leave {len(left)} person folder(s) of the earlier run in "
                                  f"{shown(out)} (e.g. {', '.join(shown(n) for n in left[:5])}) beside this run's: "
                                  "outputs of two keys or configs must not mix. Choose another --out.")
            if conflicts:
                listed = "; ".join(f"{shown(out / n)} {why}" for n, why in conflicts[:10]) + \
                    (" ..." if len(conflicts) > 10 else "")
                raise OutputError(f"{len(conflicts)} output folder(s) in the way: {listed}. Nothing was computed or "
                                  "deleted; pass --overwrite to redo faceanonymixer outputs, move other folders away, "
                                  "or choose another --out.")
            self.run.start()
        except BaseException:
            self.run.close()
            raise
        self.states = {n: st for n, (st, _) in states.items()}
        self.result = DatasetResult([], [u.name for u in units if self.states[u.name] == "done"], 0, [])
        self.batch_people = max(1, int(config.batch_people))
        self._bar = _bar(len(units), len(self.result.skipped), progress)
        self._t0, self._n_img = time.perf_counter(), 0

    def batches(self) -> list[tuple[int, list[Unit], set[str]]]:
        """(index, people, names still to do) of each batch with something to do. The batches are fixed by the
        plan, not by what is left, so a resumed run (or another engine) optimises the same groups of people as an
        uninterrupted one: bit-identical outputs, as the outputs depend on the batch's composition."""
        B, todo = self.batch_people, []
        for i, c in enumerate(range(0, len(self.units), B)):
            chunk = self.units[c:c + B]
            names = {u.name for u in chunk if self.states[u.name] != "done"}
            if names:
                todo.append((i, chunk, names))
        return todo

    def commit(self, name: str, files: dict[str, bytes], sources: list[str], timings: dict) -> None:
        """Write one finished person (``files``: pipeline.person_files) atomically and record it in the manifest."""
        self.run.commit(name, files, dict(inputs=self.digests[name], images=len(sources), timings=timings))
        self.states[name] = "done"
        self.result.written.append(name)
        self.result.images += len(sources)
        if self.pm is not None:
            _private_entry(self.pm, self.out, name, sources)

    def batch_done(self, people: int, images: int) -> None:
        """Progress: a batch's ``people`` committed with ``images`` images."""
        self._n_img += images
        if self._bar is not None:
            dt = time.perf_counter() - self._t0
            self._bar.set_postfix(images=self._n_img, img_s=f"{self._n_img / max(dt, 1e-9):.2f}", refresh=False)
            self._bar.update(people)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.run.close()


def protect_dataset(protector, units: list[Unit], key: Key, out, *, overwrite: bool = False,
                    resume: bool = False, private_manifest=None, progress: bool = True) -> DatasetResult:
    """Protect ``units`` under ``key`` into ``out`` (see the module docstring for the guarantees).
    ``private_manifest``: optional JSON file (outside ``out``) mapping each output to its person and source photo;
    it links protected images to real ones, so it is written with mode 0600 and never by default."""
    job = Job(protector.config, units, key, out, overwrite=overwrite, resume=resume,
              private_manifest=private_manifest, progress=progress)
    try:
        for _, chunk, todo in job.batches():
            br = protector.protect_people([u.images for u in chunk], key, [u.name for u in chunk])
            job.result.failures += br.failures
            done = [r for r in br.results if r.name in todo]
            for r in done:
                job.commit(r.name, person_files(r, protector), r.sources, r.timings)
            job.batch_done(len(todo), sum(len(r.sources) for r in done))
        return job.result
    finally:
        job.close()


def _bar(total: int, initial: int, progress: bool):
    if not progress:
        return None
    return tqdm(total=total, initial=initial, desc="protect", unit="person", file=sys.stderr, dynamic_ncols=True)


def check_private_manifest(private_manifest, out: Path) -> Path | None:
    """The --private-manifest path, checked before any work: outside ``out``, in an existing folder, and either
    new or one of ours (someone else's file is never written into)."""
    if not private_manifest:
        return None
    pm, out = Path(private_manifest), Path(out)
    if pm.resolve() == out.resolve() or out.resolve() in pm.resolve().parents:
        raise OutputError(f"--private-manifest {shown(pm)} must be outside --out {shown(out)}: it names the "
                          "people and source photos of the protected images")
    if not pm.parent.is_dir():
        raise OutputError(f"--private-manifest: folder {shown(pm.parent)} does not exist")
    if pm.exists() or pm.is_symlink():
        _open_private(pm).close()
    return pm


_PM_HEADER = {"format": "faceanonymixer-private-manifest", "version": 1}


def _open_private(pm: Path):
    """The private manifest for appending: created with mode 0600 and a header line, or an existing one of ours
    (JSON lines whose first line is that header). Any other existing file is refused, never overwritten."""
    if pm.exists() or pm.is_symlink():
        try:
            with open(pm, "rb") as f:
                first = f.readline()
            ok = pm.is_file() and json.loads(first) == _PM_HEADER
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise OutputError(f"--private-manifest {shown(pm)} exists and is not a faceanonymixer private manifest; "
                              "refusing to write into it. Give a new file name.")
        return open(pm, "ab")
    fd = os.open(pm, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    f = os.fdopen(fd, "ab")
    f.write(json.dumps(_PM_HEADER).encode() + b"\n")
    return f


def _private_entry(pm: Path, out: Path, name: str, sources: list[str]) -> None:
    with _open_private(pm) as f:
        for stem, src in zip(output_stems(sources), sources):
            f.write(json.dumps(dict(output=f"{name}/{stem}.png", person=name,
                                    source=str(Path(src).resolve()))).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
