"""``faceanonymixer client enrol|verify|revoke|status PERSON ... --server URL``: the verification service's client.
Photos are protected here, under a key that stays here (same protection as local enrol/verify/revoke); only the
protected PNGs and the key's fingerprint are sent. The API token is read from an environment variable."""
from __future__ import annotations

import json
import os

from ..errors import FaceAnonyMixerError, KeyFileError
from ..fileio import shown
from ..keys import write_key_file
from ..service.tokens import TOKEN_ENV
from .common import _ENV_NAME, add_config, add_key, app_config, key_from_args, protector, report_bad
from .serve import add_refuse_token

HELP = "enrol / verify / revoke at a verification service (protects locally, sends protected images only)"


def _common(p):
    p.add_argument("--server", default=os.environ.get("FACEANONYMIXER_SERVER"), metavar="URL",
                   help="service URL, e.g. http://127.0.0.1:8000 (default: $FACEANONYMIXER_SERVER)")
    p.add_argument("--token-env", default=TOKEN_ENV, metavar="VAR",
                   help=f"environment variable holding the API token (default {TOKEN_ENV}; a token is never "
                        "taken on the command line)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    add_refuse_token(p)


def add_arguments(p):
    sub = p.add_subparsers(dest="client_command", metavar="enrol|verify|revoke|status", required=True)
    e = sub.add_parser("enrol", help="protect a person's photos here and enrol the protected templates")
    e.add_argument("person", help="person id")
    e.add_argument("images", nargs="+", help="the person's photos (files or a folder)")
    v = sub.add_parser("verify", help="protect a probe here and ask the service whether it matches (exit 0 = "
                       "match, 1 = no match)")
    v.add_argument("person", help="claimed person id")
    v.add_argument("probe", help="probe photo")
    r = sub.add_parser("revoke", help="revoke a person's key for good (optionally re-enrol under a new key)")
    r.add_argument("person", help="person id")
    r.add_argument("images", nargs="*", help="photos to re-enrol under the new key")
    r.add_argument("--new-key", help="new key file (created if it does not exist)")
    r.add_argument("--new-passphrase-env", metavar="VAR", help="the new key from a passphrase in environment "
                   "variable VAR")
    r.add_argument("--new-salt", default="", help="public per-user salt for --new-passphrase-env")
    s = sub.add_parser("status", help="a person's enrolment state at the service")
    s.add_argument("person", help="person id")
    for q in (e, v, r, s):
        _common(q)
        add_config(q)
    for q in (e, v):
        add_key(q)


def _client(args):
    from ..service import require
    require("httpx")
    from ..service.client import Client
    if not args.server:
        raise FaceAnonyMixerError("no service URL: pass --server URL or set FACEANONYMIXER_SERVER")
    if not _ENV_NAME.fullmatch(args.token_env):
        raise FaceAnonyMixerError("--token-env takes the NAME of an environment variable, not a token (value not "
                                  "shown); if you typed the token there, ask for a new one")
    token = os.environ.get(args.token_env)
    if not token:   # the name is repeated only when it is the default: a token given to --token-env may look like one
        which = TOKEN_ENV if args.token_env == TOKEN_ENV else "named by --token-env"
        raise FaceAnonyMixerError(f"no API token: the environment variable {which} is not set (the operator makes a "
                                  "token with `faceanonymixer serve token add NAME`). If you gave the token itself to "
                                  "--token-env, ask for a new one.")
    return Client(args.server, token, timeout=args.timeout)


def run(args) -> int:
    from ..service import client as svc
    cfg = app_config(args)
    cmd = args.client_command
    with _client(args) as c:
        if cmd == "status":
            print(json.dumps(c.person(args.person)))
            return 0
        if cmd == "enrol":
            key = key_from_args(args)
            res, e = svc.enrol(c, protector(args, cfg), cfg, args.person, key, args.images)
            dup = res.get("duplicates", 0)
            print(f"enrolled {res['stored']} protected template(s) for '{shown(args.person)}' at {shown(c.url)} "
                  f"(key {key.fingerprint})" + (f"; {dup} already enrolled" if dup else ""))
            return report_bad(e.failures)
        if cmd == "verify":
            key = key_from_args(args)
            res = svc.verify(c, lambda: protector(args, cfg), cfg, args.person, key, args.probe)
            print(json.dumps(res))
            return 0 if res["match"] else 1
        return _revoke(args, cfg, c, svc)


def _revoke(args, cfg, c, svc) -> int:
    from .revoke import _new_key
    if args.images and not (args.new_key or args.new_passphrase_env):
        raise KeyFileError("photos to re-enrol need a new key: add --new-key FILE (created if absent) or "
                           "--new-passphrase-env VAR; nothing was revoked")
    new, write_new = _new_key(args)
    prot = protector(args, cfg) if new is not None and args.images else None
    # the new key file is written before the server commits: an enrolment under a key nobody holds is worse
    res, e = svc.revoke(c, prot, cfg, args.person, new, args.images,
                        before_commit=(lambda: write_key_file(args.new_key, new)) if write_new else None)
    print(f"revoked '{shown(args.person)}' at {shown(c.url)}: key {res['revoked_key_fingerprint']} can never be "
          f"enrolled again; {res['deleted']} template(s) deleted")
    if new is None:
        return 0
    print(f"new key fingerprint {new.fingerprint}; re-enrolled {res['stored']} protected template(s)")
    return report_bad(e.failures) if e is not None else 0
