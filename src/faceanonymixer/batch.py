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
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import config_hash
from .errors import FaceAnonyMixerError, ImageError
from .fileio import atomic_write, shown
from .images import list_images
from .keys import Key

log = logging.getLogger(__name__)

MANIFEST = "faceanonymixer-run.json"
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
            bad.append((str(d), f"{shown(d)}: no images in this folder; skipped"))

    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            try:
                subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            except OSError as e:
                bad.append((inp, f"{shown(p)}: cannot be read ({e.strerror})"))
                continue
            for d in subs:
                add_folder(d, d.name)
            add_folder(p, p.name, allow_subs_only=bool(subs))
        elif p.exists() or p.is_symlink():
            loose.append(p)
        else:
            bad.append((inp, f"{shown(p)}: no such file or folder. Check the path."))
    if loose:
        units.append(Unit(_safe_name(loose[0].parent.name), loose, "the files given"))
    seen: dict[str, Unit] = {}
    kept = []
    for u in units:
        if u.name in seen:
            bad.append((u.origin, f"{shown(u.origin)}: its person folder '{shown(u.name)}' is also made from "
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


class Run:
    """The output folder of one protection run: its lock, manifest, and the atomic commit of each person."""

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
        mpath = out / MANIFEST
        if mpath.exists():
            try:
                m = json.loads(mpath.read_text())
                assert m.get("format") == "faceanonymixer-run" and isinstance(m.get("people"), dict)
            except (OSError, ValueError, AssertionError):
                raise OutputError(f"{shown(mpath)} is damaged; use another --out, or --overwrite to start this run "
                                  "afresh there") from None
            same = m.get("key_fingerprint") == self.fp and m.get("config_hash") == self.cfg_hash
            if same:
                self.people = m["people"]
            elif not overwrite:
                raise OutputError(
                    f"{shown(out)} holds the outputs of another run (key {m.get('key_fingerprint')}, config "
                    f"{m.get('config_hash')}; this run: key {self.fp}, config {self.cfg_hash}). Outputs of two keys "
                    "or configs must not mix: choose another --out, or pass --overwrite to replace the folders of "
                    "the people in this run.")
        elif resume:
            raise OutputError(f"--resume: {shown(out)} holds no run manifest ({MANIFEST}); nothing to resume")

    def close(self):
        self._lock.close()

    # what is already there
    def _ours(self, d: Path) -> dict | None:
        """{file: sha256} when folder ``d`` is a complete output of this run (every PNG has its sidecar with this
        key, config and the PNG's sha256), else None."""
        try:
            files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
        except OSError:
            return None
        pngs = [n for n in files if n.endswith(".png")]
        if not pngs or len(files) != 2 * len(pngs):
            return None
        for n in pngs:
            j = files.get(n[:-4] + ".json")
            try:
                side = json.loads(j) if j is not None else None
            except ValueError:
                return None
            if not side or side.get("key_fingerprint") != self.fp or side.get("config_hash") != self.cfg_hash \
                    or side.get("image_sha256") != _sha(files[n]):
                return None
        return {n: _sha(b) for n, b in sorted(files.items())}

    def status(self, name: str) -> str:
        """'done' (skip), 'todo', 'replace' (exists, --overwrite) or 'conflict'."""
        d = self.out / name
        if not (d.exists() or d.is_symlink()):
            self.people.pop(name, None)
            return "todo"
        if d.is_dir() and not d.is_symlink():
            rec = self.people.get(name)
            files = self._ours(d)
            if files is not None and (rec is None or rec.get("files") == files):
                self.people[name] = dict(files=files, **({} if rec is None else
                                                         {k: v for k, v in rec.items() if k != "files"}))
                return "done"
        return "replace" if self.overwrite else "conflict"

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
        self.save()

    def save(self) -> None:
        m = dict(format="faceanonymixer-run", version=1, key_fingerprint=self.fp, config_hash=self.cfg_hash,
                 people=dict(sorted(self.people.items())))
        atomic_write(self.out / MANIFEST, lambda f: f.write(json.dumps(m, indent=1).encode() + b"\n"))


# -- the run -----------------------------------------------------------------------------------------------
@dataclass
class DatasetResult:
    written: list[str]             # people written by this call
    skipped: list[str]             # people already done (resumed)
    images: int                    # images written by this call
    failures: list[tuple[str, str]]


def protect_dataset(protector, units: list[Unit], key: Key, out, *, overwrite: bool = False,
                    resume: bool = False, private_manifest=None, progress: bool = True) -> DatasetResult:
    """Protect ``units`` under ``key`` into ``out`` (see the module docstring for the guarantees).
    ``private_manifest``: optional JSON file (outside ``out``) mapping each output to its person and source photo;
    it links protected images to real ones, so it is written with mode 0600 and never by default."""
    from .pipeline import person_files
    out = Path(out)
    pm = Path(private_manifest) if private_manifest else None
    if pm is not None:
        if pm.resolve() == out.resolve() or out.resolve() in pm.resolve().parents:
            raise OutputError(f"--private-manifest {shown(pm)} must be outside --out {shown(out)}: it names the "
                              "people and source photos of the protected images")
        if not pm.parent.is_dir():
            raise OutputError(f"--private-manifest: folder {shown(pm.parent)} does not exist")
    check_out(out, [str(p) for u in units for p in u.images])   # no output among the photos; writable
    run = Run(out, key.fingerprint, config_hash(protector.config), overwrite, resume)
    try:
        states = {u.name: run.status(u.name) for u in units}
        conflicts = [u.name for u in units if states[u.name] == "conflict"]
        if conflicts:
            listed = ", ".join(shown(out / n) for n in conflicts[:10]) + (" ..." if len(conflicts) > 10 else "")
            raise OutputError(f"{len(conflicts)} output folder(s) already exist and were not made by this run (key "
                              f"{key.fingerprint}, this config): {listed}. Nothing was computed or overwritten; pass "
                              "--overwrite to replace them, or choose another --out.")
        run.save()
        res = DatasetResult([], [u.name for u in units if states[u.name] == "done"], 0, [])
        B = max(1, int(protector.config.batch_people))
        bar = _bar(len(units), len(res.skipped), progress)
        t0, n_img = time.perf_counter(), 0
        for c in range(0, len(units), B):
            # The batches are fixed by the plan, not by what is left, so a resumed run optimises the same groups
            # of people as an uninterrupted one (bit-identical outputs); a batch with nothing to do is skipped.
            chunk = units[c:c + B]
            todo = {u.name for u in chunk if states[u.name] != "done"}
            if not todo:
                continue
            br = protector.protect_people([u.images for u in chunk], key, [u.name for u in chunk])
            res.failures += br.failures
            for r in br.results:
                if r.name not in todo:
                    continue
                files = person_files(r, protector)
                run.commit(r.name, files, dict(images=len(r.sources), timings=r.timings))
                res.written.append(r.name)
                res.images += len(r.sources)
                if pm is not None:
                    _private_entry(pm, out, r)
            n_img += sum(len(r.sources) for r in br.results if r.name in todo)
            if bar is not None:
                bar.update(len(todo))
                dt = time.perf_counter() - t0
                bar.set_postfix(images=n_img, img_s=f"{n_img / max(dt, 1e-9):.2f}", refresh=False)
        if bar is not None:
            bar.close()
        return res
    finally:
        run.close()


def _bar(total: int, initial: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="protect", unit="person", file=sys.stderr, dynamic_ncols=True)


def _private_entry(pm: Path, out: Path, r) -> None:
    from .pipeline import output_stems
    data = json.loads(pm.read_text()) if pm.exists() else {}
    for stem, src in zip(output_stems(r.sources), r.sources):
        data[f"{r.name}/{stem}.png"] = dict(person=r.name, source=str(Path(src).resolve()))
    atomic_write(pm, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()), mode=0o600)
