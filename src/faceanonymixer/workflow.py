"""The application around the method: its settings (``AppConfig``: protect + workflow + demo, ``load_config``)
and the enrol / verify / revoke operations on a gallery of protected templates (the CLI's ``enrol``, ``verify``,
``revoke`` call these; so can Python code).

    cfg = load_config("configs/default.yaml")
    prot = workflow_protector(cfg)                       # Protector with the key anchor for lone probes
    enrol(prot, cfg, "gallery.db", "alice", key, ["a1.jpg", "a2.jpg"])   # a path, or a database URL
    verify(prot, cfg, "gallery.db", "alice", key, "probe.jpg")     # -> dict(match, score, threshold, ...)
    revoke(cfg, "gallery.db", "alice", new_key=key2, prot=prot, images=["a3.jpg"])

Every gallery change is one transaction that enforces one active key per person and never takes a revoked key
back (gallery.py, the same gallery the service uses); every check runs before the protection work, so a refused
command fails in a second and changes nothing (docs/security.md). ``gallery_path`` is a SQLite file path or a
database URL (``sqlite:///FILE``, ``postgresql://...``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from .errors import FaceAnonyMixerError, ImageError
from .fileio import shown
from .fr import get_recogniser
from .gallery import Gallery
from .images import list_images
from .keys import Key
from .pipeline import Protector, ProtectConfig
from .tensors import to_uint8

DEFAULT_THRESHOLD = 0.363                 # OpenCV's SFace cosine threshold for real faces


# -- settings ----------------------------------------------------------------------------------------------
@dataclass
class WorkflowConfig:
    matcher: str = "sface"                # recogniser the enrol/verify "FR system" uses
    threshold: float | None = None        # cosine decision threshold; None = the value the generator's weights
                                          # name for the matcher (calibrated), else 0.363 (OpenCV's SFace)
    gallery: str = "gallery.db"
    w_anchor: float | None = 10000.0      # key anchor (loss.w_anchor) for enrol/verify/revoke, which protect a probe
                                          # alone; None = protect.loss.w_anchor (0, the paper). docs/method.md


@dataclass
class DemoConfig:
    samples: str | None = None            # folder of sample photos (default: <data_dir>/samples)
    out: str = "out/demo"
    steps: int | None = None              # override optim.steps for the demo (None = config value)


@dataclass
class AppConfig:
    protect: ProtectConfig = field(default_factory=ProtectConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def load_config(path=None, overrides: list[str] | None = None) -> AppConfig:
    """YAML -> AppConfig (unknown keys rejected; ``a.b=value`` overrides)."""
    return config_mod.load(AppConfig, path, overrides)


def verify_threshold(cfg_threshold: float | None, generator, matcher: str) -> float:
    """Decision threshold, first match wins: the config; the threshold the generator's weights name for this
    matcher (``meta.verify_thresholds``, calibrated on protected faces with `faceanonymixer calibrate`: faces
    of a small generator are more alike than real ones); 0.363."""
    if cfg_threshold is not None:
        return float(cfg_threshold)
    named = (getattr(generator, "verify_thresholds", None) or {}).get(matcher)
    return DEFAULT_THRESHOLD if named is None else float(named)


def workflow_protector(cfg: AppConfig) -> Protector:
    """The Protector enrol/verify/revoke use: the config's, plus the key anchor for lone probes."""
    pcfg = cfg.protect
    if cfg.workflow.w_anchor is not None:   # lone probes: bound their drift from the key (docs/method.md)
        pcfg = replace(pcfg, loss=replace(pcfg.loss, w_anchor=float(cfg.workflow.w_anchor)))
    return Protector(pcfg)


def matcher_for(cfg: AppConfig, prot: Protector):
    """The workflow's matcher (the protector's own recogniser when it is the same one)."""
    name = cfg.workflow.matcher
    if getattr(prot.id_net, "name", None) == name:
        return prot.id_net
    return get_recogniser(name, device=prot.device)


@torch.no_grad()
def embed(matcher, images: torch.Tensor) -> np.ndarray:
    """Protected images [N,3,R,R] in [-1,1] -> L2-normalised matcher embeddings [N,D]."""
    return matcher.embed_ffhq(images.to(getattr(matcher, "device", "cpu"))).cpu().numpy()


# -- operations --------------------------------------------------------------------------------------------
@dataclass
class Enrolment:
    embeddings: np.ndarray                # [n,D] matcher embeddings of the protected images
    images: list[np.ndarray]              # n protected HxWx3 uint8 images
    matcher: str
    failures: list[tuple[str, str]]       # (item, message) of photos that could not be used


def protect_enrolment(prot: Protector, cfg: AppConfig, key: Key, person: str, inputs) -> Enrolment:
    """Protect a person's photos (files or folders) together under ``key`` and embed them. Raises ImageError
    (listing the failures) when none is usable."""
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
        listed = "; ".join(f"{shown(i)}: {shown(m)}" for i, m in bad[:5])
        raise ImageError(f"{shown(person)}: none of the images could be used ({listed}); nothing was changed")
    r = res.results[0]
    matcher = matcher_for(cfg, prot)
    return Enrolment(embed(matcher, r.images), list(to_uint8(r.images)), matcher.name, bad)


def precheck_enrol(cfg: AppConfig, gallery_path, person: str, key: Key) -> None:
    """Everything that would refuse the enrolment, before any protection work: the gallery can be created or
    written (not locked, not read-only), the key is not revoked for the person, no other key is active."""
    with Gallery(gallery_path, create=True) as g:
        g.check_writable()
        g.precheck_enrol(person, key.fingerprint, cfg.workflow.matcher)


def enrol(prot: Protector, cfg: AppConfig, gallery_path, person: str, key: Key, inputs) -> tuple[int, Enrolment]:
    """Protect and enrol ``person``'s photos under ``key``. Returns (new templates stored, the enrolment)."""
    precheck_enrol(cfg, gallery_path, person, key)
    e = protect_enrolment(prot, cfg, key, person, inputs)
    with Gallery(gallery_path) as g:
        n = g.enrol(person, key.fingerprint, e.matcher, e.embeddings, e.images)
    return n, e


def verify(prot_factory, cfg: AppConfig, gallery_path, person: str, key: Key, probe,
           threshold: float | None = None) -> dict:
    """Protect ``probe`` alone under ``key`` and score it against ``person``'s templates. ``prot_factory``: a
    Protector or a callable making one (not called when the gallery already answers: unknown person, revoked
    key). Returns dict(person, match, score, threshold, key_fingerprint, templates) or, when refused before
    scoring, dict(person, match=False, score=None, reason)."""
    with Gallery(gallery_path) as g:
        tpl, revoked_for = g.lookup(person, key.fingerprint)
    if revoked_for is not None or not tpl:
        reason = ("no templates (not enrolled or revoked)" if revoked_for is None else "key revoked for this person"
                  if revoked_for == person else "key revoked (for another person id)")
        return dict(person=person, match=False, score=None, reason=reason)
    prot = prot_factory() if callable(prot_factory) else prot_factory
    res = prot.protect_people([[probe]], key, [person])
    if not res.results:
        raise ImageError("; ".join(m for _, m in res.failures))
    matcher = matcher_for(cfg, prot)
    if any(m != matcher.name for _, m, _ in tpl):
        raise FaceAnonyMixerError(f"'{shown(person)}' was enrolled with another matcher than {matcher.name}")
    e = embed(matcher, res.results[0].images)[0]
    thr = verify_threshold(cfg.workflow.threshold if threshold is None else threshold, prot.generator, matcher.name)
    score = float((np.stack([t for _, _, t in tpl]) @ e).max())
    return dict(person=person, match=bool(score >= thr), score=round(score, 4), threshold=thr,
                key_fingerprint=key.fingerprint, templates=len(tpl))


def precheck_revoke(cfg: AppConfig, gallery_path, person: str, new_key: Key | None) -> tuple[str, str]:
    """Everything that would refuse the revocation, before any change or protection work. Returns the person's
    active (key fingerprint, matcher)."""
    with Gallery(gallery_path) as g:
        cur = g.precheck_revoke(person, None if new_key is None else new_key.fingerprint, cfg.workflow.matcher)
        g.check_writable()
    return cur


def revoke(cfg: AppConfig, gallery_path, person: str, enrolment: Enrolment | None = None,
           new_key: Key | None = None) -> int:
    """Revoke ``person``'s active key for good; with ``new_key`` and its ``enrolment`` (protect_enrolment), the
    re-enrolment happens in the same transaction. Returns the number of templates deleted."""
    with Gallery(gallery_path) as g:
        if enrolment is None:
            return g.revoke(person)[1]
        assert new_key is not None, "a re-enrolment needs its key"
        return g.revoke(person, new_key.fingerprint, enrolment.matcher, enrolment.embeddings, enrolment.images)[1]


def gallery_path(cfg: AppConfig, explicit: str | None = None) -> Path | str:
    """``--gallery`` (else ``workflow.gallery``): a database URL as given, otherwise a SQLite file path."""
    where = explicit or cfg.workflow.gallery
    return where if "://" in where else Path(where)
