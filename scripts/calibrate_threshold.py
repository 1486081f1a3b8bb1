"""Verification threshold for the workflow (`workflow.threshold`) from an evaluation's raw scores.

Reads the scores.csv of `faceanonymixer evaluate` and prints, for one variant and recogniser, the cosine
threshold at a target false-accept rate among protected impostor pairs (different people, their own keys), the
genuine accept rate at that threshold (same person, same key) and the cross-key accept rate (same person,
different keys: what `revoke` relies on).

    python scripts/calibrate_threshold.py runs/eval_lfw100/scores.csv --recogniser sface --far 0.01
"""
from __future__ import annotations

import argparse
import csv
import json
import sys

import numpy as np


def load(path: str, variant: str, recogniser: str) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["variant"] == variant and r["recogniser"] == recogniser:
                out.setdefault(r["kind"], []).append(float(r["score"]))
    return {k: np.asarray(v) for k, v in out.items()}


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold t with mean(impostor >= t) <= far (scores are similarities: accept when >= t)."""
    s = np.sort(impostor)[::-1]
    k = int(np.floor(far * len(s)))          # at most k impostors may be accepted
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))  # just above the (k+1)-th highest impostor score


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scores", help="scores.csv written by faceanonymixer evaluate")
    ap.add_argument("--variant", default="method")
    ap.add_argument("--recogniser", default="sface", help="the workflow's matcher (workflow.matcher)")
    ap.add_argument("--far", type=float, default=0.01)
    a = ap.parse_args(argv)
    d = load(a.scores, a.variant, a.recogniser)
    if "impostor" not in d or "genuine" not in d:
        print(f"{a.scores}: no genuine/impostor scores for variant {a.variant!r}, recogniser {a.recogniser!r}",
              file=sys.stderr)
        return 2
    imp = d["impostor"]
    if a.far * len(imp) < 1:
        print(f"warning: {len(imp)} impostor pairs cannot resolve FAR {a.far:g}", file=sys.stderr)
    t = threshold_at_far(imp, a.far)
    res = dict(variant=a.variant, recogniser=a.recogniser, far_target=a.far, threshold=round(t, 4),
               n_impostor=len(imp), far=float(np.mean(imp >= t)),
               n_genuine=len(d["genuine"]), tar=float(np.mean(d["genuine"] >= t)))
    if "mated" in d:  # same person under two different keys
        res.update(n_cross_key=len(d["mated"]), cross_key_accept=float(np.mean(d["mated"] >= t)))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
