"""API tokens: per-client bearer tokens, stored only as SHA-256 hashes (store.py ``fam_tokens``), shown once when
made (``faceanonymixer serve token add NAME``), read by the client from an environment variable, never logged."""
from __future__ import annotations

import re

from .errors import unauthorized

TOKEN_ENV = "FACEANONYMIXER_TOKEN"        # where `faceanonymixer client` reads its token by default
_BEARER = re.compile(r"Bearer ([A-Za-z0-9_\-]{16,128})")


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; 401 (without repeating the header) otherwise."""
    if not header:
        raise unauthorized("no API token: send 'Authorization: Bearer TOKEN' (make one with `faceanonymixer serve "
                           "token add NAME`)")
    m = _BEARER.fullmatch(header.strip())
    if m is None:
        raise unauthorized("malformed Authorization header: expected 'Bearer TOKEN' (value not shown)")
    return m.group(1)


def authenticate(store, header: str | None) -> str:
    """The client name the presented token belongs to; 401 for a missing, malformed or unknown token."""
    name = store.token_name(bearer(header))
    if name is None:
        raise unauthorized("unknown or removed API token (value not shown); ask the operator for a token "
                           "(`faceanonymixer serve token add NAME`)")
    return name
