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
import urllib.parse

from ..errors import FaceAnonyMixerError
from ..fileio import shown
from ..keys import Key
from ..pipeline import png_bytes
from ..workflow import AppConfig, Enrolment, protect_enrolment
from .errors import ApiError


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

    def enrol_pngs(self, person: str, key_fingerprint: str, pngs: list[bytes], dry_run: bool = False) -> dict:
        return self._call("POST", "/v1/enrol", dict(person=person, key_fingerprint=key_fingerprint,
                                                    images=[_b64(p) for p in pngs], dry_run=dry_run))

    def verify_png(self, person: str, key_fingerprint: str, png: bytes | None, dry_run: bool = False) -> dict:
        return self._call("POST", "/v1/verify", dict(person=person, key_fingerprint=key_fingerprint,
                                                     image=None if png is None else _b64(png), dry_run=dry_run))

    def revoke_pngs(self, person: str, new_key_fingerprint: str | None = None, pngs: list[bytes] | None = None,
                    dry_run: bool = False) -> dict:
        return self._call("POST", "/v1/revoke", dict(person=person, new_key_fingerprint=new_key_fingerprint,
                                                     images=[_b64(p) for p in pngs or []], dry_run=dry_run))


def _b64(png: bytes) -> str:
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
