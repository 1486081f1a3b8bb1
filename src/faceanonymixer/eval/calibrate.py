"""``faceanonymixer calibrate``: the verification threshold for the workflow (`workflow.threshold`) from an
evaluation's raw scores.

Reads the scores.csv of `faceanonymixer evaluate` and prints, for one variant and recogniser, the cosine
threshold at a target false-accept rate among protected impostor pairs (different people, their own keys), the
genuine accept rate at that threshold (same person, same key) and the cross-key accept rate (same person,
different keys: what `revoke` relies on).

    faceanonymixer calibrate runs/eval_lfw100/scores.csv --recogniser sface --far 0.01

With ``--write-meta WEIGHTS`` the threshold is stored in that generator's JSON (``meta.verify_thresholds``), where
`verify` finds it when the config sets no ``workflow.threshold`` (re-calibrate after retraining a generator).
"""
from __future__ import annotations

import json
import logging

from ..errors import FaceAnonyMixerError
from ..fileio import atomic_write, shown
from ..models.io import config_path, read_doc
from .metrics import threshold_at_far
from .report import ScoreSet, match_rate

log = logging.getLogger(__name__)

def calibrate(scores_csv, variant: str = "method", recogniser: str = "sface", far: float = 0.01) -> dict:
    """Threshold at ``far`` among protected impostor pairs of ``variant``/``recogniser`` in an evaluation's
    scores.csv, with the genuine and cross-key accept rates at it. Raises FaceAnonyMixerError when the file has
    no such scores."""
    sc = ScoreSet.from_csv(scores_csv)
    imp, gen, cross = (sc.get(variant, k, recogniser) for k in ("impostor", "genuine", "mated"))
    if not imp.size or not gen.size:
        raise FaceAnonyMixerError(f"{shown(scores_csv)}: no genuine/impostor scores for variant {variant!r}, "
                                  f"recogniser {recogniser!r}")
    if far * imp.size < 1:
        log.warning("%d impostor pairs cannot resolve FAR %g", imp.size, far)
    t = threshold_at_far(imp, far)
    res = dict(variant=variant, recogniser=recogniser, far_target=far, threshold=round(t, 4),
               n_impostor=int(imp.size), far=match_rate(imp, t), n_genuine=int(gen.size), tar=match_rate(gen, t))
    if cross.size:  # same person under two different keys
        res.update(n_cross_key=int(cross.size), cross_key_accept=match_rate(cross, t))
    return res


def write_threshold(weights: str, recogniser: str, threshold: float) -> None:
    """Set meta.verify_thresholds[recogniser] in the JSON beside ``weights`` (atomic rewrite)."""
    doc = read_doc(weights)
    doc.setdefault("meta", {}).setdefault("verify_thresholds", {})[recogniser] = threshold
    path = atomic_write(config_path(weights), lambda f: f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n"),
                        binary=False)
    log.info("wrote meta.verify_thresholds[%r] = %s to %s", recogniser, threshold, path)

