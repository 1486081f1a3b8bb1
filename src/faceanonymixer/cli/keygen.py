"""``faceanonymixer keygen --out FILE``: a new 256-bit key file (mode 0600); prints only its fingerprint."""
from __future__ import annotations

from ..fileio import shown
from ..keys import write_key_file

HELP = "make a new secret key file (256-bit, mode 0600)"


def add_arguments(p):
    p.add_argument("--out", required=True, help="key file to write (mode 0600; never overwritten without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")


def run(args) -> int:
    key = write_key_file(args.out, overwrite=args.force)
    print(f"wrote {shown(args.out)} (fingerprint {key.fingerprint}); keep it secret, it cannot be recovered")
    return 0
