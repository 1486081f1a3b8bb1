"""``faceanonymixer weights``: every model the tool knows, where it was looked for, present or missing, where to
get a missing one, and the sha256 state (checked with --verify). Exit 1 only when --verify finds a mismatch."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import shown
from ..registry import MODELS, data_dir, sha256_file, status_rows

HELP = "list every model the tool knows, where it was looked for, and whether it is present"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table")
    p.add_argument("--verify", action="store_true", help="also check sha256 of present files (reads them)")


def _sha_state(r: dict) -> str:
    if not MODELS[r["name"]].sha256:
        return "not pinned"
    if "sha256_ok" in r:
        return "ok" if r["sha256_ok"] else "MISMATCH"
    return "pinned, not checked (--verify)" if r["present"] else "pinned"


def table(rows: list[dict]) -> str:
    """The table a person reads: one line per model (name, kind, present/MISSING, sha256 state), then where it is
    (present) or where it was looked for and how to get it (missing)."""
    home = os.environ.get("FACEANONYMIXER_HOME")
    lines = [f"looked for in order: a path given in a config, $FACEANONYMIXER_HOME "
             f"({shown(home) if home else 'not set'}), {shown(str(data_dir()))}, the package that ships the file", "",
             f"{'MODEL':<22}{'KIND':<10}{'STATUS':<9}SHA256"]
    for r in rows:
        state = "present" if r["present"] else "MISSING"
        lines.append(f"{r['name']:<22}{r['kind']:<10}{state:<9}{_sha_state(r)}")
        if r["present"]:
            lines.append(f"    path:      {shown(r['path'])}")
        else:
            lines.append("    looked in: " + "; ".join(shown(p) for p in r["looked_in"]))
            lines.append(f"    to get it: {r['obtain']}")
        if r.get("sha256_ok") is False:
            lines.append(f"    the file is corrupt or another version: delete it, then {r['obtain']}")
        lines.append(f"    licence:   {r['licence']}")
    missing = [r["name"] for r in rows if not r["present"]]
    bad = [r["name"] for r in rows if r.get("sha256_ok") is False]
    lines += ["", f"{len(rows) - len(missing)} of {len(rows)} models present"
              + (f"; missing: {', '.join(missing)}" if missing else "")
              + (f"; sha256 mismatch: {', '.join(bad)}" if bad else "")]
    if any(MODELS[n].kind == "official" for n in missing):
        lines.append("the official checkpoints are needed only for the paper's configuration and for FID; the "
                     "default configuration runs without them")
    return "\n".join(lines)


def run(args) -> int:
    rows = status_rows()
    if args.verify:
        for r in rows:
            if r["present"] and MODELS[r["name"]].sha256:
                r["sha256_ok"] = sha256_file(Path(r["path"])) == MODELS[r["name"]].sha256
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(table(rows))
    return 1 if any(r.get("sha256_ok") is False for r in rows) else 0
