"""The deployment CLI: keygen, protect, enrol, verify, revoke (``SUBCOMMANDS`` for cli.py).

* ``keygen --out alice.key``: new 256-bit key, mode 0600; prints only its fingerprint.
* ``protect INPUT... --key K --out DIR``: files or folders (a folder of images = one person; a folder of
  sub-folders = one person per sub-folder; loose files = one person); writes PNG + sidecar JSON per image.
* ``enrol PERSON IMAGE... --key K --gallery DB``: protected templates (matcher embeddings + protected PNGs).
* ``verify PERSON PROBE --key K --gallery DB``: protects the probe, prints the best cosine score and the decision
  at ``workflow.threshold`` (unset: the generator's calibrated one, else 0.363; pipeline.verify_threshold);
  exit 0 = match, 1 = no match.
* ``revoke PERSON --gallery DB [--new-key K2 [IMAGE...]]``: deletes the person's templates; with --new-key
  (created if absent) and images, re-enrols under the new key.

Bad items never stop a batch: they are listed at the end and the exit code is 1. Errors name the item.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .batch import MANIFEST, check_out, plan_people, protect_dataset
from .errors import FaceAnonyMixerError, ImageError, KeyFileError
from .fileio import shown
from .gallery import Gallery
from .images import list_images
from .keys import Key, load_key, read_key_file, write_key_file

log = logging.getLogger(__name__)


# -- shared helpers ----------------------------------------------------------------------------------------
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _add_common(p, key=True):
    p.add_argument("--config", help="YAML config (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set protect.optim.steps=20 (repeatable)")
    if key:
        p.add_argument("--key", help="key file (faceanonymixer keygen)")
        p.add_argument("--passphrase-env", metavar="VAR",
                       help="read a passphrase from environment variable VAR instead of a key file (the passphrase "
                            "itself is never taken on the command line: it would show in `ps` and shell history)")
        p.add_argument("--salt", default="", help="public per-user salt for --passphrase-env")


def _config(args):
    from .pipeline import load_config
    return load_config(args.config, args.set)


def _passphrase_key(var: str, salt: str, flag: str) -> Key:
    if not _ENV_NAME.fullmatch(var):
        # Never echo it: a user who typed the passphrase itself here must not see it printed again (logs, CI).
        raise KeyFileError(f"{flag} takes the NAME of an environment variable (letters, digits, _), not a passphrase. "
                           f"Do: read -rs FAM_PASS && export FAM_PASS, then pass {flag} FAM_PASS. If you typed the "
                           "passphrase here, it is in your shell history: choose another one.")
    if var not in os.environ:
        raise KeyFileError(f"environment variable {var} is not set (it should hold the passphrase)")
    return load_key(None, passphrase=os.environ[var], salt=salt)


def _key(args, attr="key") -> Key:
    path = getattr(args, attr, None)
    if path:
        return read_key_file(path)
    var = getattr(args, "passphrase_env", None)
    if var:
        return _passphrase_key(var, args.salt, "--passphrase-env")
    raise KeyFileError("no key given: pass --key FILE (make one with `faceanonymixer keygen --out FILE`) "
                       "or --passphrase-env VAR")


def _protector(args, cfg):
    prot = getattr(args, "protector", None)   # a preloaded Protector (Python callers, tests)
    if prot is not None:
        return prot
    from .pipeline import Protector
    pcfg = cfg.protect
    if cfg.workflow.w_anchor is not None:   # lone probes: bound their drift from the key (docs/method.md)
        pcfg = replace(pcfg, loss=replace(pcfg.loss, w_anchor=float(cfg.workflow.w_anchor)))
    return Protector(pcfg)


def _matcher(args, cfg, prot):
    name = cfg.workflow.matcher
    if getattr(prot.id_net, "name", None) == name:
        return prot.id_net
    from .fr import get_recogniser
    return get_recogniser(name, device=prot.device)


def _report_bad(bad: list[tuple[str, str]]) -> int:
    if not bad:
        return 0
    print(f"\n{len(bad)} item(s) failed:", file=sys.stderr)
    for item, msg in bad:
        print(f"  {shown(item)}: {shown(msg)}", file=sys.stderr)
    return 1


@torch.no_grad()
def _embed(matcher, images: torch.Tensor) -> np.ndarray:
    return matcher.embed_ffhq(images.to(matcher.device if hasattr(matcher, "device") else "cpu")).cpu().numpy()


def _gallery_path(args, cfg) -> str:
    return args.gallery or cfg.workflow.gallery


# -- keygen ------------------------------------------------------------------------------------------------
def add_keygen(p):
    p.add_argument("--out", required=True, help="key file to write (mode 0600; never overwritten without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")


def run_keygen(args) -> int:
    key = write_key_file(args.out, overwrite=args.force)
    print(f"wrote {shown(args.out)} (fingerprint {key.fingerprint}); keep it secret, it cannot be recovered")
    return 0


# -- protect -----------------------------------------------------------------------------------------------
def add_protect(p):
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
    _add_common(p)


def collect_people(inputs: list[str]) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, str]]]:
    """[(person, images)] from CLI inputs, plus bad inputs (batch.plan_people)."""
    units, bad = plan_people(inputs)
    return [(u.name, u.images) for u in units], bad


def run_protect(args) -> int:
    cfg = _config(args)
    key = _key(args)
    out = Path(args.out)
    units, bad = plan_people(args.inputs)
    check_out(out, args.inputs)                 # before loading any model: overlap, file, writable
    if not units:
        _report_bad(bad)
        raise ImageError("no person to protect: every input failed (listed above)")
    prot = _protector(args, cfg) if getattr(args, "protector", None) is not None else _protect_protector(cfg)
    res = protect_dataset(prot, units, key, out, overwrite=args.overwrite, resume=args.resume,
                          private_manifest=args.private_manifest, progress=not args.no_progress)
    bad += res.failures
    print(f"key {key.fingerprint}: {len(res.written)} person(s), {res.images} image(s) written to {shown(out)}"
          + (f"; {len(res.skipped)} already done (resumed)" if res.skipped else "")
          + f"; manifest {shown(out / MANIFEST)}")
    return _report_bad(bad)


def _protect_protector(cfg):
    """`protect` keeps the paper's setting (no key anchor)."""
    from .pipeline import Protector
    return Protector(cfg.protect)


# -- enrol / verify / revoke ----------------------------------------------------------------------------------
def add_enrol(p):
    p.add_argument("person", help="person id in the gallery")
    p.add_argument("images", nargs="+", help="the person's photos (files or a folder)")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery; created if missing, in an "
                   "existing folder)")
    _add_common(p)


def _protect_enrolment(args, cfg, prot, key, person, inputs) -> tuple[np.ndarray, list, str, list]:
    """Protect a person's photos -> (embeddings, protected uint8 images, matcher name, bad items)."""
    from .pipeline import to_uint8
    bad, files = [], []
    for i in inputs:
        try:
            files += list_images(i)
        except ImageError as e:
            bad.append((str(i), str(e)))
    res = prot.protect_people([files], key, [person]) if files else None
    if res is not None:
        bad += res.failures
    if not res or not res.results:
        _report_bad(bad)
        raise ImageError(f"{shown(person)}: none of the images could be used; nothing enrolled (or revoked)")
    r = res.results[0]
    matcher = _matcher(args, cfg, prot)
    return _embed(matcher, r.images), list(to_uint8(r.images)), matcher.name, bad


def run_enrol(args) -> int:
    cfg = _config(args)
    key = _key(args)
    with Gallery(_gallery_path(args, cfg), create=True) as g:   # refused early: unwritable, locked, revoked key
        g.check_writable()
        g.precheck_enrol(args.person, key.fingerprint, cfg.workflow.matcher)
    prot = _protector(args, cfg)
    emb, imgs, matcher, bad = _protect_enrolment(args, cfg, prot, key, args.person, args.images)
    with Gallery(_gallery_path(args, cfg)) as g:
        n = g.enrol(args.person, key.fingerprint, matcher, emb, imgs)
    dup = len(imgs) - n
    print(f"enrolled {n} protected template(s) for '{shown(args.person)}' (key {key.fingerprint})"
          + (f"; {dup} already enrolled" if dup else ""))
    return _report_bad(bad)


def add_verify(p):
    p.add_argument("person", help="claimed person id")
    p.add_argument("probe", help="probe photo")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: workflow.threshold, else the "
                   "generator's calibrated one, else 0.363)")
    _add_common(p)


def run_verify(args) -> int:
    cfg = _config(args)
    key = _key(args)
    with Gallery(_gallery_path(args, cfg)) as g:
        tpl = g.templates(args.person)
        revoked = g.is_revoked(args.person, key.fingerprint)
    if revoked or not tpl:
        reason = "key revoked for this person" if revoked else "no templates (not enrolled or revoked)"
        print(json.dumps(dict(person=args.person, match=False, score=None, reason=reason)))
        return 1
    prot = _protector(args, cfg)
    res = prot.protect_people([[args.probe]], key, [args.person])
    if not res.results:
        raise ImageError("; ".join(m for _, m in res.failures))
    matcher = _matcher(args, cfg, prot)
    if any(m != matcher.name for _, m, _ in tpl):
        raise FaceAnonyMixerError(f"'{shown(args.person)}' was enrolled with another matcher than {matcher.name}")
    e = _embed(matcher, res.results[0].images)[0]
    from .pipeline import verify_threshold
    thr = verify_threshold(cfg.workflow.threshold if args.threshold is None else args.threshold, prot.generator,
                           matcher.name)
    scores = np.stack([t for _, _, t in tpl]) @ e
    score = float(scores.max())
    match = score >= thr
    print(json.dumps(dict(person=args.person, match=bool(match), score=round(score, 4), threshold=thr,
                          key_fingerprint=key.fingerprint, templates=len(tpl))))
    return 0 if match else 1


def add_revoke(p):
    p.add_argument("person", help="person id whose templates are deleted")
    p.add_argument("images", nargs="*", help="photos to re-enrol under the new key (needs --new-key or "
                   "--new-passphrase-env)")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    p.add_argument("--new-key", help="new key file (created if it does not exist)")
    p.add_argument("--new-passphrase-env", metavar="VAR", help="the new key from a passphrase in environment "
                   "variable VAR (instead of --new-key)")
    p.add_argument("--new-salt", default="", help="public per-user salt for --new-passphrase-env")
    _add_common(p, key=False)


def _new_key(args) -> tuple[Key | None, bool]:
    """(the new key or None, whether its file must still be written). Checked before anything is revoked."""
    if args.new_key and args.new_passphrase_env:
        raise KeyFileError("give either --new-key or --new-passphrase-env, not both")
    if args.new_passphrase_env:
        return _passphrase_key(args.new_passphrase_env, args.new_salt, "--new-passphrase-env"), False
    if not args.new_key:
        return None, False
    p = Path(args.new_key)
    if p.exists() or p.is_symlink():
        return read_key_file(p), False
    if not p.parent.is_dir():
        raise KeyFileError(f"cannot write the new key {shown(p)}: folder {shown(p.parent)} does not exist")
    return Key.generate(), True


def run_revoke(args) -> int:
    cfg = _config(args)
    if args.images and not (args.new_key or args.new_passphrase_env):
        raise KeyFileError("photos to re-enrol need a new key: add --new-key FILE (created if absent) or "
                           "--new-passphrase-env VAR; nothing was revoked")
    new, write_new = _new_key(args)
    gpath = _gallery_path(args, cfg)
    with Gallery(gpath) as g:                    # every check before any change (and before the protection work)
        cur = g.active_key(args.person)
        if cur is None:
            raise g._not_enrolled(args.person)
        g.check_writable()
        if new is not None:
            g.precheck_enrol(args.person, new.fingerprint, cfg.workflow.matcher, replacing=True)
    emb = imgs = matcher = None
    bad: list = []
    if new is not None and args.images:
        prot = _protector(args, cfg)
        emb, imgs, matcher, bad = _protect_enrolment(args, cfg, prot, new, args.person, args.images)
    if write_new:   # before the gallery names it: a committed enrolment under a key nobody holds is worse
        write_key_file(args.new_key, new)
    with Gallery(gpath) as g:                    # revoke (+ re-enrol) in one transaction
        n = g.revoke(args.person, new.fingerprint if emb is not None else None, matcher, emb, imgs)
    print(f"revoked '{shown(args.person)}': key {cur[0]} can never be enrolled for them again; {n} template(s) deleted")
    if new is None:
        return 0
    where = f"new key {shown(args.new_key)}" if args.new_key else "new key from the passphrase"
    print(f"{where} (fingerprint {new.fingerprint})")
    if emb is None:
        print(f"re-enrol with: faceanonymixer enrol {shown(args.person)} PHOTOS "
              + (f"--key {shown(args.new_key)}" if args.new_key else "--passphrase-env VAR"))
        return 0
    print(f"re-enrolled {len(imgs)} protected template(s) for '{shown(args.person)}' (key {new.fingerprint})")
    return _report_bad(bad)


# -- gallery ---------------------------------------------------------------------------------------------------
def add_gallery(p):
    p.add_argument("action", choices=["check", "list"], help="check: verify integrity and the key invariants; "
                   "list: enrolled people with their key fingerprints")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    _add_common(p, key=False)


def run_gallery(args) -> int:
    cfg = _config(args)
    with Gallery(_gallery_path(args, cfg)) as g:
        if args.action == "list":
            for person in g.people():
                fp, m = g.active_key(person)
                print(f"{shown(person)}\tkey {fp}\t{m}\t{len(g.templates(person))} template(s)")
            return 0
        problems = g.check()
        st = g.stats()
    where = shown(_gallery_path(args, cfg))
    if problems:
        print(f"gallery {where}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"gallery {where}: ok (schema v{st['schema']}, {st['people']} person(s), {st['templates']} template(s), "
          f"{st['revocations']} revoked key(s))")
    return 0


SUBCOMMANDS = {
    "keygen": ("make a new secret key file (256-bit, mode 0600)", add_keygen, run_keygen),
    "protect": ("protect photos with a key: cancelable face images (PNG + sidecar JSON); resumable", add_protect,
                run_protect),
    "enrol": ("enrol a person's protected templates in a gallery", add_enrol, run_enrol),
    "verify": ("verify a probe photo against a person's protected templates", add_verify, run_verify),
    "revoke": ("revoke a person's key for good (optionally re-enrol under a new key, in one transaction)", add_revoke,
               run_revoke),
    "gallery": ("check a gallery's integrity, or list its people", add_gallery, run_gallery),
}
