"""``faceanonymixer verify PERSON PROBE --key K --gallery DB``: protect the probe, print the best cosine score
and the decision as one JSON line; exit 0 = match, 1 = no match."""
from __future__ import annotations

import json

from ..workflow import gallery_path, verify
from .common import add_config, add_key, app_config, key_from_args, protector

HELP = "verify a probe photo against a person's protected templates"


def add_arguments(p):
    p.add_argument("person", help="claimed person id")
    p.add_argument("probe", help="probe photo")
    p.add_argument("--gallery", help="gallery: SQLite file or database URL (default: workflow.gallery)")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: workflow.threshold, else the "
                   "generator's calibrated one, else 0.363)")
    add_config(p)
    add_key(p)


def run(args) -> int:
    cfg = app_config(args)
    key = key_from_args(args)
    res = verify(lambda: protector(args, cfg), cfg, gallery_path(cfg, args.gallery), args.person, key, args.probe,
                 args.threshold)
    print(json.dumps(res))
    return 0 if res["match"] else 1
