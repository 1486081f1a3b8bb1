"""``faceanonymixer gallery check|list|migrate``: verify a gallery's integrity and key invariants, list its people,
or carry a gallery of an older format over to this version's schema (any command does that on first open; this
one also may replace an existing backup)."""
from __future__ import annotations

import sys

from ..fileio import shown
from ..gallery import Gallery, GalleryError
from ..workflow import gallery_path
from .common import add_config, app_config

HELP = "check a gallery's integrity, list its people, or migrate an older gallery"


def add_arguments(p):
    p.add_argument("action", choices=["check", "list", "migrate"], help="check: verify integrity and the key "
                   "invariants; list: enrolled people with their key fingerprints; migrate: upgrade a gallery made "
                   "by an older faceanonymixer (a backup copy FILE.vN-backup first)")
    p.add_argument("--gallery", help="gallery: SQLite file or database URL (default: workflow.gallery)")
    p.add_argument("--overwrite-backup", action="store_true", help="migrate: replace an existing FILE.vN-backup "
                   "(never replaced otherwise)")
    p.add_argument("--revoke-shared-keys", action="store_true", help="migrate: a key that an older gallery has "
                   "active for several people is revoked for all of them (their templates deleted; each re-enrols "
                   "under their own key); without it such a gallery is not migrated")
    add_config(p)


def run(args) -> int:
    if (args.overwrite_backup or args.revoke_shared_keys) and args.action != "migrate":
        raise GalleryError("--overwrite-backup and --revoke-shared-keys go with `faceanonymixer gallery migrate`; "
                           "nothing was done")
    db = gallery_path(app_config(args), args.gallery)
    with Gallery(db, overwrite_backup=args.overwrite_backup, revoke_shared_keys=args.revoke_shared_keys) as g:
        if args.action == "list":
            for person, fp, m, n in g.listing():
                print(f"{shown(person)}\tkey {fp}\t{m}\t{n} template(s)")
            return 0
        st = g.stats()
        if args.action == "migrate":
            print(f"gallery {g.where}: schema v{st['schema']} ({st['people']} person(s), {st['templates']} "
                  f"template(s), {st['revoked_keys']} revoked key(s))")
            return 0
        problems = g.check()
    if problems:
        print(f"gallery {g.where}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"gallery {g.where}: ok (schema v{st['schema']}, {st['people']} person(s), {st['templates']} template(s), "
          f"{st['revoked_keys']} revoked key(s))")
    return 0
