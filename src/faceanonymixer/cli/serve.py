"""``faceanonymixer serve``: run the HTTP verification service (docs/service.md); ``faceanonymixer serve token
add|list|remove NAME``: manage the clients' API tokens (a new token is printed once; only its hash is stored)."""
from __future__ import annotations

import argparse
import os

from ..fileio import shown
from ..service import require

HELP = "run the HTTP verification service (protected templates only), or manage its API tokens"


class RefuseToken(argparse.Action):
    """``--token VALUE`` is refused without repeating the value: a token on the command line would show in `ps`
    and shell history."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("an API token is never taken on the command line (value not shown; if you typed a real token, "
                     "remove it and make a new one): put it in an environment variable, FACEANONYMIXER_TOKEN or "
                     "the one --token-env names")


def add_refuse_token(p) -> None:
    p.add_argument("--token", action=RefuseToken, help=argparse.SUPPRESS)


def _store_options(p, sub: bool) -> None:
    d = argparse.SUPPRESS if sub else None   # given before or after the token subcommand, never reset by it
    p.add_argument("--config", default=d, help="service YAML (default: built-in defaults, see configs/serve.yaml)")
    p.add_argument("--set", action="append", default=d, metavar="KEY=VALUE",
                   help="config override, e.g. --set limits.rate=5 (repeatable)")
    p.add_argument("--db", default=d, metavar="URL", help="database: sqlite:///FILE (default from the config) or "
                   "postgresql://USER@HOST/DB (no password here: it would show in `ps`; use PGPASSWORD, ~/.pgpass "
                   "or --db-env)")
    p.add_argument("--db-env", default=d, metavar="VAR", help="read the database URL from environment variable VAR "
                   "(for a URL with a password)")


def add_arguments(p):
    _store_options(p, sub=False)
    p.add_argument("--host", help="address to listen on (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the config's, 8000)")
    add_refuse_token(p)
    sub = p.add_subparsers(dest="serve_command", metavar="token")
    tok = sub.add_parser("token", help="manage API tokens")
    tsub = tok.add_subparsers(dest="token_command", metavar="add|list|remove", required=True)
    for name, help_ in (("add", "make a token for client NAME and print it once"),
                        ("list", "list token names"), ("remove", "remove client NAME's token")):
        t = tsub.add_parser(name, help=help_, description=help_)
        if name != "list":
            t.add_argument("name", help="client name (shown in logs instead of the token)")
        if name == "add":
            t.add_argument("--role", choices=("verify", "enrol", "admin"), default="verify",
                           help="what the token may do: verify (default: info, verify, status), enrol (+ enrol), "
                                "admin (+ revoke). A token that may enrol can add templates to anyone: give it to "
                                "enrolment stations you trust, never to end-user devices")
        _store_options(t, sub=True)
        add_refuse_token(t)


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).password is not None
    except Exception:     # noqa: BLE001 - an unparsable URL is refused later, without being repeated
        return ":" in url.split("//", 1)[-1].split("@", 1)[0] and "@" in url


def _db_url(args) -> str | None:
    """The database URL from --db-env VAR or --db; a password on the command line (--db, --set db=) is refused
    without repeating it: it would show in `ps` and shell history."""
    from ..errors import FaceAnonyMixerError
    from .common import _ENV_NAME
    on_cmdline = [getattr(args, "db", None)] + [s.split("=", 1)[1] for s in getattr(args, "set", None) or []
                                                  if s.strip().startswith("db=")]
    if any(u and _has_password(u) for u in on_cmdline):
        raise FaceAnonyMixerError("a database password is never taken on the command line (value not shown; it "
                                  "shows in `ps` and shell history): use PGPASSWORD or ~/.pgpass, or put the whole "
                                  "URL in an environment variable and pass --db-env VAR")
    var = getattr(args, "db_env", None)
    if var:
        if getattr(args, "db", None):
            raise FaceAnonyMixerError("give --db or --db-env, not both")
        if not _ENV_NAME.fullmatch(var):
            raise FaceAnonyMixerError("--db-env takes the NAME of an environment variable, not a URL (value not "
                                      "shown)")
        url = os.environ.get(var)
        if not url:
            raise FaceAnonyMixerError(f"--db-env {var}: the environment variable is not set or empty")
        return url
    return getattr(args, "db", None)


def _config(args):
    from ..service.config import load_service_config
    url = _db_url(args)          # first: a refused password must not reach a config error message
    cfg = load_service_config(getattr(args, "config", None), list(getattr(args, "set", None) or []))
    if url:          # set as given, not parsed as YAML like --set values
        cfg.db = url
    if getattr(args, "host", None):
        cfg.host = args.host
    if getattr(args, "port", None) is not None:
        cfg.port = args.port
    return cfg


def run(args) -> int:
    require("sqlalchemy")
    cfg = _config(args)
    if getattr(args, "serve_command", None) == "token":
        from ..gallery import Gallery, engine_url
        with Gallery(engine_url(cfg.db), create=True) as store:     # --db is a URL, never a bare path
            if args.token_command == "add":
                token = store.add_token(args.name, args.role)
                print(f"API token for '{shown(args.name)}', role {args.role} (shown once, only its hash is stored; "
                      "give it to the client in an environment variable, e.g. FACEANONYMIXER_TOKEN):")
                print(token)
            elif args.token_command == "remove":
                store.remove_token(args.name)
                print(f"removed the token of '{shown(args.name)}'")
            else:
                for name, _created, role in store.tokens():
                    print(f"{shown(name)}\t{role}")
        return 0
    require("fastapi", "uvicorn", "httpx")
    from ..service.app import serve
    serve(cfg, "DEBUG" if getattr(args, "verbose", False) else "INFO")
    return 0
