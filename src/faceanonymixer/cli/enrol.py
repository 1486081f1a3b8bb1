"""``faceanonymixer enrol PERSON IMAGE... --key K --gallery DB``: protected templates into the gallery."""
from __future__ import annotations

from ..fileio import shown
from ..workflow import gallery_path, precheck_enrol, protect_enrolment
from ..gallery import Gallery
from .common import add_config, add_key, app_config, key_from_args, protector, report_bad

HELP = "enrol a person's protected templates in a gallery"


def add_arguments(p):
    p.add_argument("person", help="person id in the gallery")
    p.add_argument("images", nargs="+", help="the person's photos (files or a folder)")
    p.add_argument("--gallery", help="gallery: SQLite file (created if missing, in an existing folder) or database "
                   "URL (sqlite:///FILE, postgresql://...); default: workflow.gallery")
    add_config(p)
    add_key(p)


def run(args) -> int:
    cfg = app_config(args)
    key = key_from_args(args)
    db = gallery_path(cfg, args.gallery)
    precheck_enrol(cfg, db, args.person, key)   # refused early: unwritable, locked, revoked or another key
    e = protect_enrolment(protector(args, cfg), cfg, key, args.person, args.images)
    with Gallery(db) as g:
        n = g.enrol(args.person, key.fingerprint, e.matcher, e.embeddings, e.images)
    dup = len(e.images) - n
    print(f"enrolled {n} protected template(s) for '{shown(args.person)}' (key {key.fingerprint})"
          + (f"; {dup} already enrolled" if dup else ""))
    return report_bad(e.failures)
