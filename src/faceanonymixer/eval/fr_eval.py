"""``faceanonymixer fr-eval``: face-verification accuracy of one recogniser on a pairs protocol.

Every image is read, detected (YuNet; with several faces the central one, or the largest with ``--face largest``)
and aligned once (ArcFace 112 crop; dlib-resnet uses its own chip from the detected box via ``embed_image``),
embedded, and each pair is scored by cosine similarity. A pair
with an image that failed (unreadable, no face) is not dropped: it counts as an error in the 10-fold accuracy
and is listed. The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..align import align_arcface, get_detector, pick_face
from ..errors import FaceAnonyMixerError, ImageError
from ..images import read_image
from .metrics import verification_report
from .protocols import Pair

log = logging.getLogger(__name__)

def _rel(p: Path, root) -> str:
    if root:
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            pass
    return str(p)


def embed_images(paths: list[Path], rec, mode: str, batch: int = 64, detector=None, progress: bool = True,
                 root=None, select: str = "center") -> tuple[dict[Path, np.ndarray], dict[Path, str], int]:
    """Embed each image once: ({path: embedding (D,)}, {path: error message}, number of multi-face images)."""
    detector = detector or get_detector()
    emb: dict[Path, np.ndarray] = {}
    errors: dict[Path, str] = {}
    multi = 0
    pending_paths: list[Path] = []
    pending: list[np.ndarray] = []

    def flush():
        if not pending:
            return
        x = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float().div(255.0)
        with torch.no_grad():
            z = rec.embed(x).detach().cpu().numpy().astype(np.float64)
        for p, e in zip(pending_paths, z):
            emb[p] = e
        pending.clear()
        pending_paths.clear()

    it = tqdm(paths, desc=f"embed ({rec.name})", unit="img", disable=not progress, file=sys.stderr)
    for p in it:
        try:
            img = read_image(p)
            face, n = pick_face(img, source=_rel(p, root), detector=detector, select=select)
        except ImageError as e:
            errors[p] = str(e)
            continue
        multi += n > 1
        if mode == "image":
            with torch.no_grad():
                emb[p] = rec.embed_image(img, face.xyxy).detach().cpu().numpy().astype(np.float64).reshape(-1)
        else:
            pending.append(align_arcface(img, face.landmarks5))
            pending_paths.append(p)
            if len(pending) >= batch:
                flush()
    flush()
    return emb, errors, multi


def evaluate_pairs(pairs: list[Pair], rec, mode: str = "crop", batch: int = 64, fars=(1e-3,), folds: int = 10,
                   detector=None, progress: bool = True, root=None, select: str = "center") -> dict:
    """Embed + score + metrics for a list of pairs (see module doc). Returns the JSON-ready result dict."""
    t0 = time.time()
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))
    emb, errors, multi = embed_images(paths, rec, mode, batch, detector, progress, root, select)
    scores = np.full(len(pairs), np.nan)
    labels = np.array([pair.same for pair in pairs], dtype=bool)
    for k, pair in enumerate(pairs):
        ea, eb = emb.get(pair.a), emb.get(pair.b)
        if ea is not None and eb is not None:
            scores[k] = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12))
    valid = np.isfinite(scores)
    if valid.sum() == 0 or labels[valid].all() or not labels[valid].any():
        raise FaceAnonyMixerError(f"only {int(valid.sum())} pairs could be scored ({len(errors)} of {len(paths)} "
                                  "images failed); cannot compute verification metrics. Check --root and the images.")
    rep = verification_report(scores, labels, valid=valid, fars=fars, n_folds=folds)
    rep.update(
        model=rec.name, embed=mode, face_select=select, n_images=len(paths), n_failed_images=len(errors),
        failed_images=[dict(path=_rel(p, root), error=msg) for p, msg in errors.items()],
        n_failed_pairs=int((~valid).sum()),
        n_failed_genuine=int((~valid & labels).sum()), n_failed_impostor=int((~valid & ~labels).sum()),
        multi_face_images=int(multi), seconds=round(time.time() - t0, 1),
    )
    return rep


def json_safe(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
