"""``faceanonymixer calibrate SCORES.csv``: the verify threshold at a target false-accept rate from an
evaluation's raw scores (eval/calibrate.py); ``--write-meta`` stores it in a generator's JSON."""
from __future__ import annotations

import json

from ..eval.calibrate import calibrate, write_threshold

HELP = "verification threshold at a target false-accept rate from an evaluation's scores.csv (optionally stored)"


def add_arguments(p):
    p.add_argument("scores", help="scores.csv written by faceanonymixer evaluate")
    p.add_argument("--variant", default="method")
    p.add_argument("--recogniser", default="sface", help="the workflow's matcher (workflow.matcher)")
    p.add_argument("--far", type=float, default=0.01)
    p.add_argument("--write-meta", metavar="WEIGHTS", help="generator .safetensors whose JSON gets the threshold")


def run(args) -> int:
    res = calibrate(args.scores, args.variant, args.recogniser, args.far)
    print(json.dumps(res, indent=1))
    if args.write_meta:
        write_threshold(args.write_meta, args.recogniser, res["threshold"])
    return 0
