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
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .errors import FaceAnonyMixerError, ImageError, KeyFileError
from .keys import Key, load_key, read_key_file, write_key_file

log = logging.getLogger(__name__)


# -- shared helpers ----------------------------------------------------------------------------------------
def _add_common(p, key=True):
    p.add_argument("--config", help="YAML config (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set protect.optim.steps=20 (repeatable)")
    if key:
        p.add_argument("--key", help="key file (faceanonymixer keygen)")
        p.add_argument("--passphrase-env", metavar="VAR",
                       help="read a passphrase from environment variable VAR instead of a key file")
        p.add_argument("--salt", default="", help="public per-user salt for --passphrase-env")


def _config(args):
    from .pipeline import load_config
    return load_config(args.config, args.set)


def _key(args, attr="key") -> Key:
    path = getattr(args, attr, None)
    if path:
        return read_key_file(path)
    var = getattr(args, "passphrase_env", None)
    if var:
        if var not in os.environ:
            raise KeyFileError(f"environment variable {var} is not set (it should hold the passphrase)")
        return load_key(None, passphrase=os.environ[var], salt=args.salt)
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
        print(f"  {item}: {msg}", file=sys.stderr)
    return 1


@torch.no_grad()
def _embed(matcher, images: torch.Tensor) -> np.ndarray:
    return matcher.embed_ffhq(images.to(matcher.device if hasattr(matcher, "device") else "cpu")).cpu().numpy()


# -- keygen ------------------------------------------------------------------------------------------------
def add_keygen(p):
    p.add_argument("--out", required=True, help="key file to write (mode 0600; never overwritten without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")


def run_keygen(args) -> int:
    key = write_key_file(args.out, overwrite=args.force)
    print(f"wrote {args.out} (fingerprint {key.fingerprint}); keep it secret, it cannot be recovered")
    return 0


# -- protect -----------------------------------------------------------------------------------------------
def add_protect(p):
    p.add_argument("inputs", nargs="+", help="image files or folders (sub-folders = one person each)")
    p.add_argument("--out", required=True, help="output folder (PNG + sidecar JSON per image)")
    _add_common(p)


def collect_people(inputs: list[str]) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, str]]]:
    """[(person, images)] from CLI inputs, plus bad inputs."""
    from .images import list_images
    people, loose, bad = [], [], []
    for inp in inputs:
        p = Path(inp)
        try:
            if p.is_dir():
                subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
                if subs:
                    for d in subs:
                        people.append((d.name, list_images(d)))
                    direct = list_images(p, allow_empty=True)
                    if direct:
                        people.append((p.name, direct))
                else:
                    people.append((p.name, list_images(p)))
            else:
                loose += list_images(p)
        except ImageError as e:
            bad.append((inp, str(e)))
    if loose:
        people.append((loose[0].parent.name or "person", loose))
    return people, bad


def run_protect(args) -> int:
    from .pipeline import save_person
    cfg = _config(args)
    key = _key(args)
    people, bad = collect_people(args.inputs)
    prot = _protector(args, cfg)
    res = prot.protect_people([imgs for _, imgs in people], key, [n for n, _ in people])
    bad += res.failures
    out = Path(args.out)
    for r in res.results:
        sub = out / r.name if len(people) > 1 else out
        for path in save_person(r, sub, prot):
            print(f"wrote {path}")
    log.info("key %s, %d person(s) protected", key.fingerprint, len(res.results))
    return _report_bad(bad)


# -- enrol / verify / revoke ----------------------------------------------------------------------------------
def add_enrol(p):
    p.add_argument("person", help="person id in the gallery")
    p.add_argument("images", nargs="+", help="the person's photos (files or a folder)")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    _add_common(p)


def _enrol(args, cfg, prot, key, person, inputs) -> tuple[int, list]:
    from .gallery import Gallery
    from .images import list_images
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
        raise ImageError(f"{person}: none of the images could be used; nothing enrolled")
    r = res.results[0]
    matcher = _matcher(args, cfg, prot)
    emb = _embed(matcher, r.images)
    with Gallery(args.gallery or cfg.workflow.gallery) as g:
        n = g.enrol(person, key.fingerprint, matcher.name, emb, list(to_uint8(r.images)))
    return n, bad


def run_enrol(args) -> int:
    cfg = _config(args)
    key = _key(args)
    prot = _protector(args, cfg)
    n, bad = _enrol(args, cfg, prot, key, args.person, args.images)
    print(f"enrolled {n} protected template(s) for '{args.person}' (key {key.fingerprint})")
    return _report_bad(bad)


def add_verify(p):
    p.add_argument("person", help="claimed person id")
    p.add_argument("probe", help="probe photo")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: workflow.threshold, else the "
                   "generator's calibrated one, else 0.363)")
    _add_common(p)


def run_verify(args) -> int:
    from .gallery import Gallery
    cfg = _config(args)
    key = _key(args)
    with Gallery(args.gallery or cfg.workflow.gallery) as g:
        tpl = g.templates(args.person)
    if not tpl:
        print(json.dumps(dict(person=args.person, match=False, score=None, reason="no templates (not enrolled or revoked)")))
        return 1
    prot = _protector(args, cfg)
    res = prot.protect_people([[args.probe]], key, [args.person])
    if not res.results:
        raise ImageError("; ".join(m for _, m in res.failures))
    matcher = _matcher(args, cfg, prot)
    if any(m != matcher.name for _, m, _ in tpl):
        raise FaceAnonyMixerError(f"'{args.person}' was enrolled with another matcher than {matcher.name}")
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
    p.add_argument("images", nargs="*", help="photos to re-enrol under --new-key (optional)")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    p.add_argument("--new-key", help="new key file (created if it does not exist)")
    _add_common(p, key=False)


def run_revoke(args) -> int:
    from .gallery import Gallery
    cfg = _config(args)
    with Gallery(args.gallery or cfg.workflow.gallery) as g:
        n = g.revoke(args.person)
    print(f"revoked '{args.person}': {n} template(s) deleted")
    if not args.new_key:
        return 0
    new = read_key_file(args.new_key) if Path(args.new_key).exists() else write_key_file(args.new_key)
    print(f"new key {args.new_key} (fingerprint {new.fingerprint})")
    if not args.images:
        print(f"re-enrol with: faceanonymixer enrol {args.person} PHOTOS --key {args.new_key}")
        return 0
    prot = _protector(args, cfg)
    m, bad = _enrol(args, cfg, prot, new, args.person, args.images)
    print(f"re-enrolled {m} protected template(s) for '{args.person}' (key {new.fingerprint})")
    return _report_bad(bad)


SUBCOMMANDS = {
    "keygen": ("make a new secret key file (256-bit, mode 0600)", add_keygen, run_keygen),
    "protect": ("protect photos with a key: cancelable face images (PNG + sidecar JSON)", add_protect, run_protect),
    "enrol": ("enrol a person's protected templates in a gallery", add_enrol, run_enrol),
    "verify": ("verify a probe photo against a person's protected templates", add_verify, run_verify),
    "revoke": ("revoke a person's templates (optionally re-enrol under a new key)", add_revoke, run_revoke),
}
