"""API tokens: per-client bearer tokens, stored only as SHA-256 hashes (gallery.py ``fam_tokens``), shown once when
made (``faceanonymixer serve token add NAME``), read by the client from an environment variable, never logged."""
from __future__ import annotations

import re

from ..fileio import shown
from .errors import ApiError, unauthorized

TOKEN_ENV = "FACEANONYMIXER_TOKEN"        # where `faceanonymixer client` reads its token by default
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9_\-]{16,128})")   # the scheme is case-insensitive (RFC 7235)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; 401 (without repeating the header) otherwise."""
    if not header:
        raise unauthorized("no API token: send 'Authorization: Bearer TOKEN' (make one with `faceanonymixer serve "
                           "token add NAME`)")
    m = _BEARER.fullmatch(header.strip())
    if m is None:
        raise unauthorized("malformed Authorization header: expected 'Bearer TOKEN' (value not shown)")
    return m.group(1)


def authenticate(store, header: str | None) -> tuple[str, str]:
    """(client name, role) of the presented token; 401 for a missing, malformed or unknown token."""
    found = store.token_client(bearer(header))
    if found is None:
        raise unauthorized("unknown or removed API token (value not shown); ask the operator for a token "
                           "(`faceanonymixer serve token add NAME`)")
    return found


# The role each route needs (gallery.ROLES order: a role may do what the ones before it may).
ROUTE_ROLES = {"/v1/enrol": "enrol", "/v1/revoke": "admin"}
_ROLE_RANK = {"verify": 0, "enrol": 1, "admin": 2}


def authorize(name: str, role: str, path: str) -> None:
    """403 ``forbidden`` when a token of ``role`` may not use ``path`` (everything else needs 'verify')."""
    need = ROUTE_ROLES.get(path, "verify")
    if _ROLE_RANK.get(role, -1) < _ROLE_RANK[need]:
        raise ApiError(403, "forbidden", f"the API token of client '{shown(name)}' has role '{role}', and {path} "
                       f"needs '{need}'; ask the operator for a token made with `faceanonymixer serve token add NAME "
                       f"--role {need}`")
