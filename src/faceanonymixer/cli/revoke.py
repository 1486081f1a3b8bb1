"""``faceanonymixer revoke PERSON [IMAGE...] --gallery DB [--new-key K2]``: revoke a person's key for good;
with a new key and photos, re-enrol in the same transaction. Every check runs before anything changes."""
from __future__ import annotations

from pathlib import Path

from ..errors import KeyFileError
from ..fileio import shown
from ..keys import Key, read_key_file, write_key_file
from ..workflow import gallery_path, precheck_revoke, protect_enrolment, revoke
from .common import add_config, app_config, passphrase_key, protector, report_bad

HELP = "revoke a person's key for good (optionally re-enrol under a new key, in one transaction)"


def add_arguments(p):
    p.add_argument("person", help="person id whose templates are deleted")
    p.add_argument("images", nargs="*", help="photos to re-enrol under the new key (needs --new-key or "
                   "--new-passphrase-env)")
    p.add_argument("--gallery", help="gallery: SQLite file or database URL (default: workflow.gallery)")
    p.add_argument("--new-key", help="new key file (created if it does not exist)")
    p.add_argument("--new-passphrase-env", metavar="VAR", help="the new key from a passphrase in environment "
                   "variable VAR (instead of --new-key)")
    p.add_argument("--new-salt", default="", help="public per-user salt for --new-passphrase-env")
    add_config(p)


def _new_key(args) -> tuple[Key | None, bool]:
    """(the new key or None, whether its file must still be written). Checked before anything is revoked."""
    if args.new_key and args.new_passphrase_env:
        raise KeyFileError("give either --new-key or --new-passphrase-env, not both")
    if args.new_passphrase_env:
        return passphrase_key(args.new_passphrase_env, args.new_salt, "--new-passphrase-env"), False
    if not args.new_key:
        return None, False
    p = Path(args.new_key)
    if p.exists() or p.is_symlink():
        return read_key_file(p), False
    if not p.parent.is_dir():
        raise KeyFileError(f"cannot write the new key {shown(p)}: folder {shown(p.parent)} does not exist")
    return Key.generate(), True


def run(args) -> int:
    cfg = app_config(args)
    if args.images and not (args.new_key or args.new_passphrase_env):
        raise KeyFileError("photos to re-enrol need a new key: add --new-key FILE (created if absent) or "
                           "--new-passphrase-env VAR; nothing was revoked")
    new, write_new = _new_key(args)
    db = gallery_path(cfg, args.gallery)
    cur = precheck_revoke(cfg, db, args.person, new)
    e = protect_enrolment(protector(args, cfg), cfg, new, args.person, args.images) if new and args.images else None
    if write_new:   # before the gallery names it: a committed enrolment under a key nobody holds is worse
        write_key_file(args.new_key, new)
    n = revoke(cfg, db, args.person, e, new)
    print(f"revoked '{shown(args.person)}': key {cur[0]} can never be enrolled for them again; {n} template(s) deleted")
    if new is None:
        return 0
    where = f"new key {shown(args.new_key)}" if args.new_key else "new key from the passphrase"
    print(f"{where} (fingerprint {new.fingerprint})")
    if e is None:
        print(f"re-enrol with: faceanonymixer enrol {shown(args.person)} PHOTOS "
              + (f"--key {shown(args.new_key)}" if args.new_key else "--passphrase-env VAR"))
        return 0
    print(f"re-enrolled {len(e.images)} protected template(s) for '{shown(args.person)}' (key {new.fingerprint})")
    return report_bad(e.failures)
