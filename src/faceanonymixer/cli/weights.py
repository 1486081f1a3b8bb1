"""``faceanonymixer weights``: every model the tool knows, where it was looked for, present or missing (and
with --verify whether its sha256 matches the registry)."""
from __future__ import annotations

import json
from pathlib import Path

from ..registry import MODELS, sha256_file, status_rows

HELP = "list every model the tool knows, where it was looked for, and whether it is present"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--verify", action="store_true", help="also check sha256 of present files (reads them)")


def run(args) -> int:
    rows = status_rows()
    if args.verify:
        for r in rows:
            if r["present"] and MODELS[r["name"]].sha256:
                r["sha256_ok"] = sha256_file(Path(r["path"])) == MODELS[r["name"]].sha256
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
