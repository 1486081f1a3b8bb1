"""``faceanonymixer gallery check|list``: verify a gallery's integrity and key invariants, or list its people."""
from __future__ import annotations

import sys

from ..fileio import shown
from ..gallery import Gallery
from ..workflow import gallery_path
from .common import add_config, app_config

HELP = "check a gallery's integrity, or list its people"


def add_arguments(p):
    p.add_argument("action", choices=["check", "list"], help="check: verify integrity and the key invariants; "
                   "list: enrolled people with their key fingerprints")
    p.add_argument("--gallery", help="SQLite gallery (default: workflow.gallery)")
    add_config(p)


def run(args) -> int:
    db = gallery_path(app_config(args), args.gallery)
    with Gallery(db) as g:
        if args.action == "list":
            for person in g.people():
                fp, m = g.active_key(person)
                print(f"{shown(person)}\tkey {fp}\t{m}\t{len(g.templates(person))} template(s)")
            return 0
        problems, st = g.check(), g.stats()
    if problems:
        print(f"gallery {shown(db)}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"gallery {shown(db)}: ok (schema v{st['schema']}, {st['people']} person(s), {st['templates']} template(s), "
          f"{st['revocations']} revoked key(s))")
    return 0
