"""The HTTP verification service (``faceanonymixer serve``) and its client (``faceanonymixer client``, ``Client``).

The cancelable-biometrics deployment: the user's device holds the key and protects the photo; the server stores
and matches protected templates only and never sees an original face or a key (docs/service.md). Modules:
``config`` (ServiceConfig), ``tokens``, ``limits``, ``errors``, ``jsonlog``, ``app`` (FastAPI + uvicorn),
``client`` (httpx); the gallery (SQLite or PostgreSQL, API tokens included) is ``faceanonymixer.gallery``, the one
the local commands use. Nothing here is imported by ``import faceanonymixer``; fastapi/uvicorn/httpx (and psycopg
for PostgreSQL) come with ``pip install faceanonymixer[service]``.
"""
from __future__ import annotations

EXTRA_HINT = "pip install 'faceanonymixer[service]'"


def require(*modules: str) -> None:
    """Import-check the service extra's packages; a FaceAnonyMixerError naming the missing one otherwise."""
    import importlib

    from ..errors import FaceAnonyMixerError
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise FaceAnonyMixerError(f"the verification service needs the '{m}' package: {EXTRA_HINT}") from None
