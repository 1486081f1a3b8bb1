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
import sys

from ..fileio import atomic_write
from ..models.io import config_path, read_doc
from .metrics import threshold_at_far
from .report import ScoreSet, match_rate

HELP = "verification threshold at a target false-accept rate from an evaluation's scores.csv (optionally stored)"


def add_arguments(ap):
    ap.add_argument("scores", help="scores.csv written by faceanonymixer evaluate")
    ap.add_argument("--variant", default="method")
    ap.add_argument("--recogniser", default="sface", help="the workflow's matcher (workflow.matcher)")
    ap.add_argument("--far", type=float, default=0.01)
    ap.add_argument("--write-meta", metavar="WEIGHTS", help="generator .safetensors whose JSON gets the threshold")


def run(a) -> int:
    sc = ScoreSet.from_csv(a.scores)
    imp, gen, cross = (sc.get(a.variant, k, a.recogniser) for k in ("impostor", "genuine", "mated"))
    if not imp.size or not gen.size:
        print(f"{a.scores}: no genuine/impostor scores for variant {a.variant!r}, recogniser {a.recogniser!r}",
              file=sys.stderr)
        return 2
    if a.far * imp.size < 1:
        print(f"warning: {imp.size} impostor pairs cannot resolve FAR {a.far:g}", file=sys.stderr)
    t = threshold_at_far(imp, a.far)
    res = dict(variant=a.variant, recogniser=a.recogniser, far_target=a.far, threshold=round(t, 4),
               n_impostor=int(imp.size), far=match_rate(imp, t), n_genuine=int(gen.size), tar=match_rate(gen, t))
    if cross.size:  # same person under two different keys
        res.update(n_cross_key=int(cross.size), cross_key_accept=match_rate(cross, t))
    print(json.dumps(res, indent=1))
    if a.write_meta:
        write_threshold(a.write_meta, a.recogniser, res["threshold"])
    return 0


def write_threshold(weights: str, recogniser: str, threshold: float) -> None:
    """Set meta.verify_thresholds[recogniser] in the JSON beside ``weights`` (atomic rewrite)."""
    doc = read_doc(weights)
    doc.setdefault("meta", {}).setdefault("verify_thresholds", {})[recogniser] = threshold
    path = atomic_write(config_path(weights), lambda f: f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n"),
                        binary=False)
    print(f"wrote meta.verify_thresholds[{recogniser!r}] = {threshold} to {path}", file=sys.stderr)

