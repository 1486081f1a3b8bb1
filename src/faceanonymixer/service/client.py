"""The client side of the verification service: ``Client`` (HTTP, httpx) and ``enrol`` / ``verify`` / ``revoke``,
which protect photos locally with the workflow's protection path (``workflow.protect_enrolment``: same Protector,
config and key as local enrol/verify/revoke) and send only the protected PNGs and the key's fingerprint. The key
and the original photos never leave this process.

    client = Client("http://127.0.0.1:8000", token=os.environ["FACEANONYMIXER_TOKEN"])
    prot, cfg = workflow_protector(app_cfg), app_cfg
    enrol(client, prot, cfg, "alice", key, ["a1.jpg", "a2.jpg"])
    verify(client, prot, cfg, "alice", key, "probe.jpg")       # -> dict(match, score, threshold, ...)
    revoke(client, prot, cfg, "alice", new_key=key2, images=["a3.jpg"])
"""
from __future__ import annotations

import base64
import logging
import math
import re
import urllib.parse

from ..errors import FaceAnonyMixerError
from ..fileio import shown
from ..keys import Key
from ..pipeline import png_bytes
from ..workflow import AppConfig, Enrolment, protect_enrolment
from .config import loopback
from .errors import ApiError

log = logging.getLogger(__name__)
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_PNG = b"\x89PNG\r\n\x1a\n"


class Client:
    """Thin HTTP client of the service. Every non-2xx answer raises ``ApiError(status, error, detail)``; a server
    that cannot be reached raises FaceAnonyMixerError naming the URL. The token is sent as a bearer header only."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0):  # server URL, API token, seconds
        import logging

        import httpx  # the service extra; imported here so that faceanonymixer imports without it
        logging.getLogger("httpx").setLevel(logging.WARNING)   # one INFO line per request (with person ids) otherwise
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise FaceAnonyMixerError(f"server URL '{shown(url)}' must start with http:// or https://")
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if self.url.startswith("http://") and not loopback(host):
            log.warning("the service at %s is reached over plain http: the API token and the protected images travel "
                        "unencrypted; use https:// (a TLS-terminating proxy in front of the server)", shown(self.url))
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._httpx = httpx

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            r = self._http.request(method, path, json=body)
        except self._httpx.HTTPError as e:
            raise FaceAnonyMixerError(f"cannot reach the service at {self.url} ({type(e).__name__}: {e}); is "
                                      "`faceanonymixer serve` running there?") from None
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if r.is_success and isinstance(doc, dict):
            return doc
        if isinstance(doc, dict) and "error" in doc:
            raise ApiError(r.status_code, str(doc["error"]), str(doc.get("detail", "")))
        raise ApiError(r.status_code, "http_error", f"unexpected answer from {self.url}{path}")

    # one method per endpoint
    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def info(self) -> dict:
        return self._call("GET", "/v1/info")

    def person(self, person: str) -> dict:
        return self._call("GET", "/v1/people/" + urllib.parse.quote(person, safe=""))

    # Every method checks what it is about to send (a fingerprint, never a key; PNGs, never a JPEG original) and
    # what the server answered (types, and that the answer is about this request): a broken or hostile server's
    # reply is an error, never a match.
    def enrol_pngs(self, person: str, key_fingerprint: str, pngs: list[bytes], dry_run: bool = False) -> dict:
        body = dict(person=person, key_fingerprint=_fingerprint(key_fingerprint, "key_fingerprint"),
                    images=[_b64(p, f"images[{i}]") for i, p in enumerate(pngs)], dry_run=dry_run)
        doc = self._call("POST", "/v1/enrol", body)
        if not dry_run:
            self._expect(doc, "/v1/enrol", person, stored=int, duplicates=int)
        return doc

    def verify_png(self, person: str, key_fingerprint: str, png: bytes | None, dry_run: bool = False) -> dict:
        body = dict(person=person, key_fingerprint=_fingerprint(key_fingerprint, "key_fingerprint"),
                    image=None if png is None else _b64(png, "image"), dry_run=dry_run)
        doc = self._call("POST", "/v1/verify", body)
        if dry_run:
            return doc
        self._expect(doc, "/v1/verify", person, match=bool, threshold=float)
        if doc.get("score") is not None:       # null unless the server reveals scores (match.reveal_score)
            self._expect(doc, "/v1/verify", person, score=float)
        margin = 0.0 if doc.get("score") is None else doc["score"] - doc["threshold"]   # score rounded to 4 places
        if (doc["match"] and margin < -1e-4) or (not doc["match"] and margin > 1e-4) \
                or doc.get("key_fingerprint") != key_fingerprint:
            raise self._bad("/v1/verify", "its match does not follow from its score and threshold, or it is about "
                            "another key")
        return doc

    def revoke_pngs(self, person: str, new_key_fingerprint: str | None = None, pngs: list[bytes] | None = None,
                    dry_run: bool = False) -> dict:
        fp = None if new_key_fingerprint is None else _fingerprint(new_key_fingerprint, "new_key_fingerprint")
        body = dict(person=person, new_key_fingerprint=fp,
                    images=[_b64(p, f"images[{i}]") for i, p in enumerate(pngs or [])], dry_run=dry_run)
        doc = self._call("POST", "/v1/revoke", body)
        if not dry_run:
            self._expect(doc, "/v1/revoke", person, revoked_key_fingerprint=str, deleted=int, stored=int)
            if not _FINGERPRINT.fullmatch(doc["revoked_key_fingerprint"]):     # it is printed: no escape codes
                raise self._bad("/v1/revoke", "revoked_key_fingerprint is not a fingerprint")
        return doc

    def _bad(self, path: str, why: str) -> FaceAnonyMixerError:
        return FaceAnonyMixerError(f"the service at {self.url} gave a malformed answer to {path} ({why}); nothing "
                                   "is taken from it. Is --server a faceanonymixer service of this version?")

    def _expect(self, doc: dict, path: str, person: str, **types) -> None:
        """``doc`` names ``person`` and has each field with its type (bool is not a number; numbers are finite)."""
        if doc.get("person") != person:
            raise self._bad(path, "it is about another person id")
        for k, t in types.items():
            v = doc.get(k)
            ok = (isinstance(v, bool) if t is bool else
                  isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) if t is float else
                  isinstance(v, int) and not isinstance(v, bool) and v >= 0 if t is int else isinstance(v, t))
            if not ok:
                raise self._bad(path, f"field '{k}' is missing or not a {t.__name__}")




def _fingerprint(fp, what: str) -> str:
    """A key fingerprint (16 lower-case hex) or FaceAnonyMixerError (value not shown: it may be a key)."""
    if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
        raise FaceAnonyMixerError(f"{what} must be a key's fingerprint (16 hex digits, Key.fingerprint), never the "
                                  "key itself (value not shown); nothing was sent")
    return fp


def _b64(png: bytes, what: str = "image") -> str:
    """A protected PNG as base64; anything that is not PNG bytes (an original JPEG, a path, a key) is refused
    here, before it leaves this process."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == _PNG:
        raise FaceAnonyMixerError(f"{what}: not PNG bytes; the service takes protected PNGs only (the protector's "
                                  "output, e.g. pipeline.png_bytes(image)), never an original photo; nothing was "
                                  "sent")
    return base64.b64encode(png).decode("ascii")


def check_compatible(client: Client, prot, cfg: AppConfig) -> dict:
    """The server's matcher and image side must be this client's (else its templates could never match): checked
    before any protection work. Returns the server's info."""
    info = client.info()
    if info.get("resolution") != prot.resolution:
        raise FaceAnonyMixerError(f"the service at {client.url} takes {info.get('resolution')} px protected images, "
                                  f"this client's generator makes {prot.resolution} px; use the server's generator "
                                  "(protect.models.generator)")
    if info.get("matcher") != cfg.workflow.matcher:
        raise FaceAnonyMixerError(f"the service at {client.url} matches with {info.get('matcher')}, this config "
                                  f"says workflow.matcher={cfg.workflow.matcher}; set --set workflow.matcher="
                                  f"{info.get('matcher')}")
    return info


def _protect(prot, cfg: AppConfig, key: Key, person: str, inputs) -> tuple[Enrolment, list[bytes]]:
    e = protect_enrolment(prot, cfg, key, person, inputs)
    return e, [png_bytes(im) for im in e.images]


def enrol(client: Client, prot, cfg: AppConfig, person: str, key: Key, inputs) -> tuple[dict, Enrolment]:
    """Check with the server (dry run), protect ``inputs`` under ``key`` locally, send the protected PNGs."""
    check_compatible(client, prot, cfg)
    client.enrol_pngs(person, key.fingerprint, [], dry_run=True)     # refused now, before minutes of protection
    e, pngs = _protect(prot, cfg, key, person, inputs)
    return client.enrol_pngs(person, key.fingerprint, pngs), e


def verify(client: Client, prot_factory, cfg: AppConfig, person: str, key: Key, probe) -> dict:
    """Protect ``probe`` alone under ``key`` (as local verify does) and ask the server to score it. A refusal
    the server can give without the probe (unknown person, revoked key) comes before any protection work."""
    client.verify_png(person, key.fingerprint, None, dry_run=True)
    prot = prot_factory() if callable(prot_factory) else prot_factory
    check_compatible(client, prot, cfg)
    e, pngs = _protect(prot, cfg, key, person, [probe])
    return client.verify_png(person, key.fingerprint, pngs[0])


def revoke(client: Client, prot, cfg: AppConfig, person: str, new_key: Key | None = None,
           images=None, before_commit=None) -> tuple[dict, Enrolment | None]:
    """Revoke ``person``'s key at the server; with ``new_key`` and ``images``, protect them locally first and
    re-enrol in the same server transaction. Every check runs (dry run) before any protection work;
    ``before_commit()`` (e.g. writing the new key file) runs after the protection, before the server commits."""
    fp = new_key.fingerprint if new_key is not None else None
    client.revoke_pngs(person, fp, dry_run=True)
    e = pngs = None
    if new_key is not None and images:
        check_compatible(client, prot, cfg)
        e, pngs = _protect(prot, cfg, new_key, person, images)
    if before_commit is not None:
        before_commit()
    return client.revoke_pngs(person, fp, pngs), e
