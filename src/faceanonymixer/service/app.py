"""The verification service: ``Service`` (the work: decode protected PNGs, embed them with the matcher, match,
store) and ``create_app`` (its FastAPI face: routes, token check, rate limit, body limit, JSON errors, JSON-lines
request log), ``serve`` (uvicorn, graceful on SIGTERM). Needs the ``service`` extra (fastapi, uvicorn); the
gallery is gallery.py's, the one the local commands use. Importing faceanonymixer does not import this module.

The server holds the matcher only: no generator, no key. It receives protected images (PNG, base64 in JSON) and a
key fingerprint (public, 16 hex), never an original photo or a key.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at runtime.
import logging
import threading
import time
import unicodedata
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FaceAnonyMixerError
from ..fileio import shown
from ..fr import get_recogniser
from ..gallery import (MAX_NAME, ConflictError, Gallery, GalleryError, NotEnrolledError, RevokedKeyError,
                       StoreUnavailable, check_person, engine_url)
from ..tensors import from_uint8
from ..workflow import embed
from .config import ServiceConfig, loopback, resolve_profile
from .errors import ApiError, invalid, too_large
from .jsonlog import log_config
from .limits import BodyLimit, RateLimiter, decode_b64, decode_png, reply_error
from .tokens import authenticate, authorize

log = logging.getLogger("faceanonymixer.service")
API_VERSION = "1"

Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Person = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_LIST = 1000        # images in one list, whatever limits.max_images says (its LIMITS top): a body of a million
                       # empty strings is refused while it is parsed, not after


# -- request bodies -------------------------------------------------------------------------------------------
class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person: Person = Field(description="person id (1-200 printable characters, NFC, no outer spaces)")
    key_fingerprint: Fingerprint = Field(description="the key's public fingerprint (16 hex); never the key")
    images: list[str] = Field(default_factory=list, max_length=MAX_LIST, description="protected PNGs, base64")
    dry_run: StrictBool = Field(False, description="only run the checks enrolment would make (no images needed)")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person: Person
    key_fingerprint: Fingerprint
    image: str | None = Field(None, description="the probe, protected under the claimed key, PNG base64")
    dry_run: StrictBool = Field(False, description="only the checks (person enrolled, key not revoked); no image "
                                "needed")


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person: Person
    new_key_fingerprint: Fingerprint | None = Field(None, description="re-enrol under this key in the same "
                                                    "transaction (with images)")
    images: list[str] = Field(default_factory=list, max_length=MAX_LIST,
                              description="protected PNGs under the new key, base64")
    dry_run: StrictBool = False


# -- the work -------------------------------------------------------------------------------------------------
def _check_person(person: str) -> None:
    """gallery.check_person with the reason spelt out, and without echoing an over-long id."""
    if len(person) > MAX_NAME:
        raise invalid(f"person id: {len(person)} characters, over the limit of {MAX_NAME} (value not shown)")
    if person.isprintable() and unicodedata.normalize("NFC", person) != person:
        raise invalid(f"person id '{shown(person)}' is not in Unicode NFC form (a decomposed accent?); send it "
                      "NFC-normalised, e.g. unicodedata.normalize('NFC', person)")
    check_person(person)


class Service:
    """Matcher + store + limits. ``store``/``matcher`` may be given (tests); otherwise made from ``cfg``."""

    def __init__(self, cfg: ServiceConfig, store: Gallery | None = None, matcher=None):  # config, gallery, recogniser
        self.cfg = cfg
        self.profile = resolve_profile(cfg.match)
        torch.set_num_threads(cfg.match.threads)
        self.store = store if store is not None else Gallery(engine_url(cfg.db), create=True)
        self.matcher = matcher if matcher is not None else get_recogniser(self.profile.matcher,
                                                                          device=cfg.match.device)
        R = self.profile.resolution
        embed(self.matcher, torch.zeros(1, 3, R, R))      # warm up (lazy warps) before the first request
        self.limiter = RateLimiter(cfg.limits.rate, cfg.limits.burst)
        self._inflight, self._cv = 0, threading.Condition()

    def track(self, fn, *a):
        """Run an operation counted as in flight: shutdown waits for it (its transaction finishes)."""
        with self._cv:
            self._inflight += 1
        try:
            return fn(*a)
        finally:
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for in-flight operations; returns how many are still running."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._inflight and time.monotonic() < end:
                self._cv.wait(max(0.0, end - time.monotonic()))
            return self._inflight

    def info(self) -> dict:
        lim = self.cfg.limits
        return dict(api=API_VERSION, matcher=self.profile.matcher, resolution=self.profile.resolution,
                    threshold=self.profile.threshold, reveal_score=self.cfg.match.reveal_score,
                    max_images=lim.max_images,
                    max_image_bytes=lim.max_image_bytes, max_body_bytes=lim.max_body_bytes)

    def _check_count(self, b64s: list[str]) -> None:
        n, most = len(b64s), self.cfg.limits.max_images
        if n > most:
            raise too_large(f"images: {n} images, over the limit of {most} per request; send them in several "
                            "requests")

    def _images(self, b64s: list[str], field: str) -> tuple[np.ndarray, list[bytes]]:
        """base64 PNGs -> (embeddings [n,D], the PNG bytes as received)."""
        lim = self.cfg.limits
        self._check_count(b64s)
        pngs, arrays = [], []
        for i, s in enumerate(b64s):
            what = f"{field}[{i}]"
            data = decode_b64(s, what, lim.max_image_bytes)
            arrays.append(decode_png(data, what, self.profile.resolution, lim.max_image_bytes))
            pngs.append(data)
        return embed(self.matcher, from_uint8(np.stack(arrays))), pngs

    def enrol(self, req: EnrolRequest) -> dict:
        _check_person(req.person)
        if not req.images and not req.dry_run:
            raise invalid("images: at least one protected image is needed to enrol (or set dry_run)")
        self._check_count(req.images)
        self.store.precheck_enrol(req.person, req.key_fingerprint, self.profile.matcher)   # before any decoding
        if req.dry_run:
            return dict(person=req.person, ok=True, dry_run=True)
        emb, pngs = self._images(req.images, "images")
        n = self.store.enrol(req.person, req.key_fingerprint, self.profile.matcher, emb, pngs)
        return dict(person=req.person, key_fingerprint=req.key_fingerprint, stored=n, duplicates=len(pngs) - n)

    def verify(self, req: VerifyRequest) -> dict:
        _check_person(req.person)
        if req.image is None and not req.dry_run:
            raise invalid("image: the protected probe is missing (or set dry_run)")
        probe = None
        if req.image is not None:
            data = decode_b64(req.image, "image", self.cfg.limits.max_image_bytes)
            probe = decode_png(data, "image", self.profile.resolution, self.cfg.limits.max_image_bytes)
        tpl, revoked = self.store.lookup(req.person, req.key_fingerprint)
        if revoked:
            raise RevokedKeyError(f"key {req.key_fingerprint} was revoked and can never verify again; the person "
                                  "must be re-enrolled under a new key")
        if not tpl:
            raise NotEnrolledError(f"'{shown(req.person)}' has no templates (not enrolled, or revoked); enrol first")
        if any(m != self.profile.matcher for _, m, _ in tpl):
            raise ConflictError(f"'{shown(req.person)}' was enrolled with another matcher than "
                                f"{self.profile.matcher}; revoke and re-enrol")
        if any(fp != req.key_fingerprint for fp, _, _ in tpl):     # a probe is scored only under the enrolled key
            raise ConflictError(f"key {req.key_fingerprint} is not the key '{shown(req.person)}' is enrolled under; "
                                "verify with the key file used for enrolment")
        if req.dry_run:
            return dict(person=req.person, ok=True, dry_run=True, templates=len(tpl))
        e = embed(self.matcher, from_uint8(probe[None]))[0]
        thr = self.profile.threshold
        score = float((np.stack([t for _, _, t in tpl]) @ e).max())
        return dict(person=req.person, match=bool(score >= thr),
                    score=round(score, 4) if self.cfg.match.reveal_score else None, threshold=thr,
                    key_fingerprint=req.key_fingerprint, templates=len(tpl))

    def revoke(self, req: RevokeRequest) -> dict:
        _check_person(req.person)
        if req.images and req.new_key_fingerprint is None:
            raise invalid("images: photos to re-enrol need new_key_fingerprint; nothing was revoked")
        self._check_count(req.images)
        old, _ = self.store.precheck_revoke(req.person, req.new_key_fingerprint, self.profile.matcher)
        if req.dry_run:
            return dict(person=req.person, ok=True, dry_run=True, key_fingerprint=old)
        emb, pngs = self._images(req.images, "images") if req.images else (None, None)
        old, deleted, added = self.store.revoke(req.person, req.new_key_fingerprint, self.profile.matcher, emb,
                                                pngs)
        return dict(person=req.person, revoked_key_fingerprint=old, deleted=deleted,
                    new_key_fingerprint=req.new_key_fingerprint, stored=added)

    def person(self, person: str) -> dict:
        _check_person(person)
        return self.store.person(person)


# -- HTTP -----------------------------------------------------------------------------------------------------
def _error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _as_api_error(e: Exception) -> tuple[int, str, str]:
    if isinstance(e, ApiError):
        return e.status, e.error, e.detail
    if isinstance(e, RevokedKeyError):
        return 403, "revoked_key", str(e)
    if isinstance(e, NotEnrolledError):
        return 404, "not_enrolled", str(e)
    if isinstance(e, ConflictError):
        return 409, "conflict", str(e)
    if isinstance(e, StoreUnavailable):   # the database's name and error are for the operator's log, not the client
        return 503, "unavailable", "the gallery database is unavailable; retry later (the operator's log has the " \
                                   "details)"
    if isinstance(e, (GalleryError, FaceAnonyMixerError)):
        return 422, "invalid_request", str(e)
    return 500, "internal", "internal error; the operator's log has the details"


def _validation_detail(e: RequestValidationError) -> str:
    """Which fields are wrong and why, without repeating the values (images are long, ids are personal)."""
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + ". See the API description at /docs."


ROUTES = {"/healthz", "/v1/info", "/v1/enrol", "/v1/verify", "/v1/revoke", "/docs", "/openapi.json",
          "/docs/oauth2-redirect", "/redoc"}     # the paths the request log names as they are




class TokenGate:
    """ASGI middleware in front of every ``/v1/`` route: the bearer token, its role (tokens.ROUTE_ROLES) and its
    rate limit are checked from the request's headers, before any byte of the body is read or parsed. A refused
    client gets 401 (403 for a role that may not use the route, 429 when limited) and the connection is closed:
    it cannot make the server buffer or parse bodies."""

    def __init__(self, app, service):  # the ASGI app, the Service (its store holds the token hashes)
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization")
        try:
            name, role = await run_in_threadpool(authenticate, self.service.store,
                                                 None if header is None else header.decode("latin-1"))
            scope.setdefault("state", {}).update(client=name, role=role)
            authorize(name, role, scope["path"])
            wait = self.service.limiter.take(name)
            if wait > 0:
                raise ApiError(429, "rate_limited", f"too many requests for this token; retry in {wait:.1f} s",
                               headers={"retry-after": str(max(1, round(wait)))})
        except Exception as e:       # noqa: BLE001 - every failure is an answer (401, 429, 503), never a traceback
            status, error, detail = _as_api_error(e)
            if isinstance(e, StoreUnavailable):
                log.warning("token check failed", extra={"fields": dict(event="unavailable", detail=str(e))})
            elif status == 500:
                log.error("unhandled error in the token check", exc_info=e, extra={"fields": dict(event="error")})
            headers = getattr(e, "headers", None) or ({"www-authenticate": "Bearer"} if status == 401 else None)
            return await reply_error(send, ApiError(status, error, shown(detail), headers))
        return await self.app(scope, receive, send)


class RequestLog:
    """Outermost ASGI middleware: one JSON log line per request (method, route, status, time, client name).
    Paths with a person id are logged as their route; tokens and bodies never."""

    def __init__(self, app):  # the ASGI app
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, rid = time.perf_counter(), [0], uuid.uuid4().hex[:12]
        scope.setdefault("state", {})

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg["headers"] = list(msg.get("headers", [])) + [(b"x-request-id", rid.encode())]
            await send(msg)
        try:
            await self.app(scope, receive, send_)
        finally:
            path = scope.get("path", "")
            route = ("/v1/people/{person}" if path.startswith("/v1/people/") else path if path in ROUTES
                     else "(no such route)")       # a mistyped path may hold a person id: never logged
            log.info("request", extra={"fields": dict(event="request", rid=rid, method=scope.get("method"),
                                                      route=route, status=status[0],
                                                      ms=round((time.perf_counter() - t0) * 1000, 1),
                                                      client=scope["state"].get("client"))})


def create_app(service: Service) -> FastAPI:
    """The FastAPI application around ``service``."""

    @asynccontextmanager
    async def lifespan(app):
        log.info("service ready", extra={"fields": dict(event="ready", **service.info())})
        yield
        left = await run_in_threadpool(service.drain, service.cfg.graceful_timeout_s)
        service.store.close()
        log.info("shutdown complete", extra={"fields": dict(event="shutdown", unfinished=left)})

    app = FastAPI(title="faceanonymixer verification service", version=API_VERSION, lifespan=lifespan,
                  description="Enrol, verify and revoke **protected** face templates. Clients protect photos "
                              "locally under their key and send only protected PNGs and the key's fingerprint. "
                              "Every error is `{\"error\": CODE, \"detail\": MESSAGE}`. Auth: `Authorization: "
                              "Bearer TOKEN` (`faceanonymixer serve token add NAME`).")

    def client(request: Request) -> str:
        """The client name TokenGate authenticated (it runs before the body is read)."""
        name = request.scope.get("state", {}).get("client")
        if name is None:            # not behind TokenGate: refuse rather than serve unauthenticated
            raise ApiError(401, "unauthorized", "no authenticated API token")
        return name

    Client = Annotated[str, Depends(client)]

    @app.exception_handler(Exception)
    async def _any(request: Request, e: Exception):
        status, error, detail = _as_api_error(e)
        if status >= 500 and status != 503:
            log.error("unhandled error", exc_info=e, extra={"fields": dict(event="error")})
        if isinstance(e, StoreUnavailable):
            log.warning("database unavailable", extra={"fields": dict(event="unavailable", detail=str(e))})
        headers = getattr(e, "headers", None) or ({"www-authenticate": "Bearer"} if status == 401 else None)
        return _error_response(status, error, shown(detail), headers)

    app.add_exception_handler(ApiError, _any)
    app.add_exception_handler(FaceAnonyMixerError, _any)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return _error_response(422, "invalid_request", _validation_detail(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 400:     # FastAPI could not parse the body (e.g. JSON nested too deeply): a bad request
            return _error_response(422, "invalid_request", "the body could not be parsed as JSON (nested too deeply "
                                   "or not UTF-8); send one JSON object. See the API description at /docs.")
        error = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error_response(e.status_code, error, str(e.detail))

    @app.get("/healthz", summary="liveness and database check (no token needed)")
    async def healthz():
        await run_in_threadpool(service.store.ping)      # a failure is a 503 without the database's name
        return {"status": "ok"}

    @app.get("/v1/info", summary="what the server expects: matcher, image side, threshold, limits")
    async def info(_: Client):
        return service.info()

    @app.post("/v1/enrol", summary="enrol a person's protected templates under a key fingerprint")
    async def enrol(req: EnrolRequest, _: Client):
        return await run_in_threadpool(service.track, service.enrol, req)

    @app.post("/v1/verify", summary="score a protected probe against a person's templates")
    async def verify(req: VerifyRequest, _: Client):
        return await run_in_threadpool(service.track, service.verify, req)

    @app.post("/v1/revoke", summary="revoke a person's key for good (optionally re-enrol in the same transaction)")
    async def revoke(req: RevokeRequest, _: Client):
        return await run_in_threadpool(service.track, service.revoke, req)

    @app.get("/v1/people/{person:path}", summary="a person's enrolment state (no templates or images)")
    async def person(person: str, request: Request, _: Client):
        doc = await run_in_threadpool(service.person, person)
        if request.scope["state"].get("role") == "verify":   # the fingerprint would be half of what verify needs
            doc.pop("key_fingerprint", None)
        return doc

    app.add_middleware(BodyLimit, max_bytes=service.cfg.limits.max_body_bytes,
                       timeout_s=service.cfg.limits.body_timeout_s)
    app.add_middleware(TokenGate, service=service)     # before BodyLimit: no body is read for a bad token
    app.add_middleware(RequestLog)
    return app


def serve(cfg: ServiceConfig, log_level: str = "INFO") -> None:
    """Run the service until SIGINT/SIGTERM (uvicorn stops accepting, lets in-flight requests finish within
    ``graceful_timeout_s``, then the lifespan waits for in-flight transactions and closes the database)."""
    import logging.config

    import uvicorn
    logging.config.dictConfig(log_config(log_level))
    logging.captureWarnings(True)            # Python warnings become JSON lines too
    if not loopback(cfg.host):
        log.warning("listening on a non-loopback address without TLS: put the service behind a TLS-terminating "
                    "proxy (API tokens and protected images travel in the requests)",
                    extra={"fields": dict(event="insecure_listen", host=cfg.host, port=cfg.port)})
    service = Service(cfg)
    app = create_app(service)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=cfg.graceful_timeout_s, server_header=False, lifespan="on",
                            limit_concurrency=cfg.limits.max_connections)
    uvicorn.Server(config).run()
