"""What several commands share: the --config/--set/--key options, reading the key without ever taking a
passphrase from the command line, and the list of failed items at the end of a batch."""
from __future__ import annotations

import os
import re
import sys

from ..errors import KeyFileError
from ..fileio import shown
from ..keys import Key, load_key, read_key_file
from ..workflow import AppConfig, load_config, workflow_protector

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_config(p) -> None:
    p.add_argument("--config", help="YAML config (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set protect.optim.steps=20 (repeatable)")


def add_key(p) -> None:
    p.add_argument("--key", help="key file (faceanonymixer keygen)")
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="read a passphrase from environment variable VAR instead of a key file (the passphrase "
                        "itself is never taken on the command line: it would show in `ps` and shell history)")
    p.add_argument("--salt", default="", help="public per-user salt for --passphrase-env")


def app_config(args) -> AppConfig:
    return load_config(args.config, args.set)


def passphrase_key(var: str, salt: str, flag: str) -> Key:
    if not _ENV_NAME.fullmatch(var):
        # Never echo it: a user who typed the passphrase itself here must not see it printed again (logs, CI).
        raise KeyFileError(f"{flag} takes the NAME of an environment variable (letters, digits, _), not a passphrase. "
                           f"Do: read -rs FAM_PASS && export FAM_PASS, then pass {flag} FAM_PASS. If you typed the "
                           "passphrase here, it is in your shell history: choose another one.")
    if var not in os.environ:   # the name is not repeated either: a one-word passphrase looks like a name
        raise KeyFileError(f"the environment variable named by {flag} is not set (it should hold the passphrase); "
                           f"export it first. If you gave the passphrase itself to {flag}, it is in your shell "
                           "history: choose another one.")
    return load_key(None, passphrase=os.environ[var], salt=salt)


def key_from_args(args) -> Key:
    if getattr(args, "key", None):
        return read_key_file(args.key)
    if getattr(args, "passphrase_env", None):
        return passphrase_key(args.passphrase_env, args.salt, "--passphrase-env")
    raise KeyFileError("no key given: pass --key FILE (make one with `faceanonymixer keygen --out FILE`) "
                       "or --passphrase-env VAR")


def protector(args, cfg: AppConfig):
    """A preloaded Protector (``args.protector``: Python callers, tests) or the workflow's."""
    prot = getattr(args, "protector", None)
    return prot if prot is not None else workflow_protector(cfg)


def report_bad(bad: list[tuple[str, str]]) -> int:
    """Print the failed items (escaped: a file name cannot forge a line); 1 if any, else 0."""
    if not bad:
        return 0
    print(f"\n{len(bad)} item(s) failed:", file=sys.stderr)
    for item, msg in bad:
        print(f"  {shown(item)}: {shown(msg)}", file=sys.stderr)
    return 1
