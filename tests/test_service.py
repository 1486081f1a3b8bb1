"""The verification service (`faceanonymixer serve`) with a real server and a real client: uvicorn started in a
subprocess on 127.0.0.1 (a free port), the `faceanonymixer client` CLI (tiny protector injected, as in
test_workflow_cli.py) protecting the sample photos locally, raw HTTP for the refusals. The gallery is SQLite
here; tests/test_service_postgres.py runs the same server tests against a throw-away PostgreSQL cluster."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _server import ServerProcess, free_port  # noqa: F401 (free_port: re-used by test_service_postgres)
from _tiny import run_cli, tiny_protector
from PIL import Image

from faceanonymixer.gallery import SCHEMA_VERSION, Gallery, RevokedKeyError
from faceanonymixer.keys import Key, write_key_file
from faceanonymixer.pipeline import png_bytes
from faceanonymixer.registry import data_dir
from faceanonymixer.workflow import load_config, protect_enrolment

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = data_dir() / "samples"
SIDE = 32                                  # the tiny protector's resolution


def add_token(db: str, name: str, role: str = "admin") -> str:
    """`faceanonymixer serve token add NAME --role ROLE` (the real command); the token is its last line."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(["serve", "token", "add", name, "--db", db, "--role", role]) == 0
    return buf.getvalue().strip().splitlines()[-1]


class Server(ServerProcess):
    """The server on ``db`` with the tiny protector's settings and test limits; JSON-lines log in ``log``."""

    def __init__(self, db: str, folder: Path, sets=()):  # database URL, folder for the log, --set overrides
        self.db = db
        args = ["--db", db, "--set", f"match.resolution={SIDE}", "--set", "match.threshold=-1",
                "--set", "limits.max_image_bytes=200000", "--set", "limits.max_body_bytes=1000000",
                "--set", "limits.max_images=4", "--set", "graceful_timeout_s=20",
                # the limiter is tested on its own (test_rate_limit_...): a fast machine must not hit it elsewhere
                "--set", "limits.rate=10000", "--set", "limits.burst=10000"]
        for s in sets:
            args += ["--set", s]
        super().__init__(args, folder / "server.log")

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('svc') / 'service.db'}"


@pytest.fixture(scope="module")
def tiny():
    return tiny_protector()


@pytest.fixture(scope="module")
def server(db_url, tmp_path_factory):
    token = add_token(db_url, "ci")
    gone = add_token(db_url, "gone")
    roles = {role: add_token(db_url, f"{role}-station", role) for role in ("verify", "enrol")}
    assert run_cli(["serve", "token", "remove", "gone", "--db", db_url]) == 0
    srv = Server(db_url, tmp_path_factory.mktemp("log"))
    srv.token, srv.removed_token, srv.role_tokens = token, gone, roles
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("k1", "k2", "k3"):
        write_key_file(d / f"{name}.key", Key.generate())
        out[name] = str(d / f"{name}.key")
    return out


@pytest.fixture(scope="module")
def pngs(tiny):
    """Two protected 32-px PNGs of the sample photos (made once, for the raw HTTP tests)."""
    e = protect_enrolment(tiny, load_config(), Key(bytes([7]) * 32), "obama",
                          [SAMPLES / "obama.jpg", SAMPLES / "obama2.jpg"])
    return [png_bytes(im) for im in e.images]


def http(server, token="ci") -> httpx.Client:
    tok = server.token if token == "ci" else token
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {tok}"} if tok else {}, timeout=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fp(path) -> str:
    from faceanonymixer.keys import read_key_file
    return read_key_file(path).fingerprint


def client(server, *argv, protector=None):
    return run_cli(["client", argv[0], *argv[1:], "--server", server.url], protector)


# -- the real client CLI against the real server ------------------------------------------------------------
def test_client_enrols_verifies_and_revokes_the_sample_photos(server, tiny, keys, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FACEANONYMIXER_TOKEN", server.token)
    k1, k2 = keys["k1"], keys["k2"]
    assert client(server, "enrol", "obama", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama2.jpg"), "--key", k1,
                  protector=tiny) == 0
    assert "enrolled 2 protected template(s) for 'obama'" in capsys.readouterr().out
    assert client(server, "status", "obama") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["enrolled"] and st["templates"] == 2 and st["key_fingerprint"] == fp(k1)
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, protector=tiny) == 0
    v = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert v["match"] and v["threshold"] == -1 and v["score"] is None and v["templates"] == 2   # no score oracle
    # another key's probe is not scored against obama's templates: 409 from the dry run, before any protection
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k2) == 2
    assert "not the key 'obama' is enrolled under" in capsys.readouterr().out
    # a second key for an enrolled person: 409 with the way out, before any protection work
    assert client(server, "enrol", "obama", str(SAMPLES / "obama.jpg"), "--key", k2, protector=tiny) == 2
    out = capsys.readouterr().out
    assert "HTTP 409 conflict" in out and "already enrolled under another key" in out
    # revoke + re-enrol under k2 in one server transaction
    assert client(server, "revoke", "obama", str(SAMPLES / "obama.jpg"), "--new-key", k2, protector=tiny) == 0
    out = capsys.readouterr().out
    assert f"key {fp(k1)} can never be enrolled again; 2 template(s) deleted" in out and "re-enrolled 1" in out
    # the revoked key: refused for verification (403 with a message) and for enrolment, for anyone
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k1, protector=tiny) == 2
    out = capsys.readouterr().out
    assert "HTTP 403 revoked_key" in out and "was revoked" in out
    assert client(server, "enrol", "barack", str(SAMPLES / "obama.jpg"), "--key", k1, protector=tiny) == 2
    assert "HTTP 403 revoked_key" in capsys.readouterr().out
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k2, protector=tiny) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["key_fingerprint"] == fp(k2)
    # what the server holds: one protected 32-px template under k2; k1 revoked
    with Gallery(server.db) as s:
        tpl, revoked = s.lookup("obama", fp(k1))
        assert revoked and len(tpl) == 1 and tpl[0][0] == fp(k2)
        assert abs(float(np.linalg.norm(tpl[0][2])) - 1) < 1e-4
    # plain revoke, then the person is gone (404 for verify, before protection)
    assert client(server, "revoke", "obama") == 0
    capsys.readouterr()
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", k2) == 2
    assert "HTTP 403 revoked_key" in capsys.readouterr().out     # k2 is revoked now too
    write_key_file(tmp_path / "fresh.key", Key.generate())
    assert client(server, "verify", "obama", str(SAMPLES / "obama3.jpg"), "--key", str(tmp_path / "fresh.key")) == 2
    assert "HTTP 404 not_enrolled" in capsys.readouterr().out
    assert client(server, "revoke", "obama") == 2
    assert "already revoked" in capsys.readouterr().out


def test_client_cli_in_a_subprocess_reads_the_token_from_the_environment(server, keys, tmp_path):
    """The installed command's code path end to end, with the tiny protector (tests/_tiny.py main)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", FAM_TOK=server.token,
               PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + sys.path))
    base = [sys.executable, str(ROOT / "tests" / "_tiny.py"), "client"]
    r = subprocess.run(base + ["enrol", "michelle", str(SAMPLES / "obama2.jpg"), "--key", keys["k3"], "--server",
                               server.url, "--token-env", "FAM_TOK"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["verify", "michelle", str(SAMPLES / "obama3.jpg"), "--key", keys["k3"], "--server",
                               server.url, "--token-env", "FAM_TOK"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["match"], r.stderr


# -- refusals: status and a clear JSON message --------------------------------------------------------------
def test_wrong_missing_or_removed_token_is_401(server, pngs, keys, monkeypatch, capsys):
    body = dict(person="p401", key_fingerprint="0" * 16, image=b64(pngs[0]))
    for tok in ("wrong-token-" + "y" * 30, server.removed_token, None):
        with http(server, tok or "") as h:
            r = h.post("/v1/verify", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        doc = r.json()
        assert doc["error"] == "unauthorized" and "token" in doc["detail"]
    with httpx.Client(base_url=server.url, headers={"authorization": "Basic abc"}) as h:
        assert h.get("/v1/info").json()["error"] == "unauthorized"
    monkeypatch.setenv("FACEANONYMIXER_TOKEN", "wrong-token-" + "z" * 30)
    assert client(server, "status", "obama") == 2
    out = capsys.readouterr().out
    assert "HTTP 401 unauthorized" in out and "z" * 30 not in out
    monkeypatch.delenv("FACEANONYMIXER_TOKEN")
    typed = server.token.replace("-", "A")      # a token given where the variable's name belongs: never echoed
    # (typed has no '-': a token starting with '-' would be parsed as an option, not as --token's value)
    for argv in (["--token-env", typed], ["--token", typed]):
        with pytest.raises(SystemExit) if argv[0] == "--token" else contextlib.nullcontext():
            assert client(server, "status", "obama", *argv) == 2
        out = capsys.readouterr()
        assert typed not in out.out + out.err and server.token not in out.out + out.err
        assert "environment variable" in out.out + out.err
    with http(server) as h:
        assert h.get("/v1/people/p401").status_code == 200     # the right token still works


def test_oversized_requests_and_images_are_413(server, pngs):
    with http(server) as h:
        r = h.post("/v1/enrol", content=b"{" + b" " * 1_100_000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large" and "1000000 bytes" in r.json()["detail"]
        big = pngs[0] + b"\0" * 210_000        # a PNG with trailing junk: over the per-image limit
        r = h.post("/v1/verify", json=dict(person="p413", key_fingerprint="1" * 16, image=b64(big)))
        assert r.status_code == 413 and "over the limit of 200000 bytes per image" in r.json()["detail"]
        r = h.post("/v1/enrol", json=dict(person="p413", key_fingerprint="1" * 16, images=[b64(pngs[0])] * 5))
        assert r.status_code == 413 and "over the limit of 4 per request" in r.json()["detail"]
        buf = io.BytesIO()                      # a decompression bomb: 169 Mpx in a few kB
        Image.new("1", (13000, 13000)).save(buf, format="PNG")
        assert len(buf.getvalue()) < 200_000
        r = h.post("/v1/verify", json=dict(person="p413", key_fingerprint="1" * 16, image=b64(buf.getvalue())))
        assert r.status_code == 413 and "13000x13000" in r.json()["detail"]


def test_non_png_is_415(server, pngs):
    buf = io.BytesIO()
    Image.open(io.BytesIO(pngs[0])).convert("RGB").save(buf, format="JPEG")
    with http(server) as h:
        r = h.post("/v1/enrol", json=dict(person="p415", key_fingerprint="2" * 16, images=[b64(buf.getvalue())]))
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert "not a PNG" in r.json()["detail"] and "images[0]" in r.json()["detail"]


def test_malformed_requests_are_422(server, pngs):
    big_side = io.BytesIO()
    Image.new("RGB", (64, 64)).save(big_side, format="PNG")
    cases = [
        (dict(person="p", key_fingerprint="not-hex", image=b64(pngs[0])), "key_fingerprint"),
        (dict(person="p", image=b64(pngs[0])), "key_fingerprint: Field required"),
        (dict(person="p", key_fingerprint="3" * 16, image="@@not base64@@"), "not base64"),
        (dict(person="p", key_fingerprint="3" * 16, image=b64(big_side.getvalue())), "64x64 px"),
        (dict(person="p", key_fingerprint="3" * 16, image=b64(pngs[0][:60])), "damaged or truncated"),
        (dict(person=" padded", key_fingerprint="3" * 16, image=b64(pngs[0])), "not allowed"),
        (dict(person="p", key_fingerprint="3" * 16, image=b64(pngs[0]), threshold=-1), "threshold"),
    ]
    with http(server) as h:
        for body, expected in cases:
            r = h.post("/v1/verify", json=body)
            assert r.status_code == 422, (body.keys(), r.text)
            doc = r.json()
            assert doc["error"] == "invalid_request" and expected in doc["detail"], doc
        r = h.post("/v1/verify", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        r = h.post("/v1/revoke", json=dict(person="p", images=[b64(pngs[0])]))
        assert r.status_code == 422 and "need new_key_fingerprint" in r.json()["detail"]
        r = h.post("/v1/enrol", json=dict(person="p", key_fingerprint="3" * 16, images=[]))
        assert r.status_code == 422 and "at least one" in r.json()["detail"]
        assert h.get("/v1/nothing-here").json()["error"] == "not_found"


def test_person_ids_with_slashes_and_unicode_round_trip(server, pngs):
    with http(server) as h:
        for person in ("org/unit/ana", "Zoë Ñ"):
            r = h.post("/v1/enrol", json=dict(person=person, key_fingerprint=Key.generate().fingerprint,
                                              images=[b64(pngs[0])]))
            assert r.status_code == 200 and r.json()["stored"] == 1, r.text
            from urllib.parse import quote
            doc = h.get("/v1/people/" + quote(person, safe="")).json()
            assert doc["person"] == person and doc["enrolled"] and doc["templates"] == 1
        api = h.get("/openapi.json").json()
        assert api["info"]["title"].startswith("faceanonymixer")
        assert {"/v1/enrol", "/v1/verify", "/v1/revoke", "/v1/people/{person}", "/healthz"} <= set(api["paths"])
        assert h.get("/docs").status_code == 200


def test_same_templates_twice_are_stored_once_and_keys_belong_to_one_person(server, pngs):
    k = Key.generate().fingerprint
    with http(server) as h:
        body = dict(person="twice", key_fingerprint=k, images=[b64(p) for p in pngs])
        assert h.post("/v1/enrol", json=body).json()["stored"] == 2
        again = h.post("/v1/enrol", json=body).json()
        assert again["stored"] == 0 and again["duplicates"] == 2
        r = h.post("/v1/enrol", json=dict(body, person="someone-else"))
        assert r.status_code == 409 and "another person id" in r.json()["detail"]
        r = h.post("/v1/revoke", json=dict(person="twice", new_key_fingerprint=k, images=[b64(pngs[0])]))
        assert r.status_code == 409 and "the key being revoked" in r.json()["detail"]
        assert h.get("/v1/people/twice").json()["templates"] == 2      # the refused revoke changed nothing


def test_concurrent_enrols_of_one_person_with_two_keys_let_one_in(server, pngs):
    """Eight clients race to enrol one person id under eight keys: exactly one key wins, the others get 409."""
    keys_ = [Key.generate().fingerprint for _ in range(8)]
    barrier, codes = threading.Barrier(8), [None] * 8

    def go(i):
        with http(server) as h:
            barrier.wait()
            codes[i] = h.post("/v1/enrol", json=dict(person="raced", key_fingerprint=keys_[i],
                                                     images=[b64(pngs[i % 2])])).status_code
    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(codes) == [200] + [409] * 7, codes
    with http(server) as h:
        doc = h.get("/v1/people/raced").json()
    assert doc["key_fingerprint"] == keys_[codes.index(200)] and doc["templates"] == 1


# -- hostile clients (tests/test_service_hostile.py has the ones that need no server) -------------------------
def test_a_bad_token_is_refused_from_the_headers_before_any_body_is_read(server):
    """No token, or a wrong one: 401 as soon as the headers are in, without waiting for (or parsing) a body: an
    anonymous client cannot make the server buffer megabytes or parse JSON."""
    for auth in (b"", b"Authorization: Bearer wrong-token-wrong-token-wrong\r\n"):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
                  b"Content-Length: 900000\r\n\r\n{")
        t0 = time.monotonic()
        status, doc = _response(s)
        assert status == 401 and doc["error"] == "unauthorized" and time.monotonic() - t0 < 8
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.post("/v1/verify", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = h.post("/v1/people/x", content=b"{}", headers={"authorization": "Bearer " + "x" * 40})
        assert r.status_code == 401


def test_token_roles_limit_who_may_change_the_gallery(server, pngs):
    """Any token could add templates under any fingerprint (the server cannot tell which key protected an image)
    or revoke anyone: so a verify token (the default of `serve token add`) may only verify and read, an enrol
    token may also enrol, only an admin token may revoke. Refused from the headers (403), before the body."""
    fp_ = Key.generate().fingerprint
    enrol = dict(person="roles", key_fingerprint=fp_, images=[b64(pngs[0])])
    verify = dict(person="roles", key_fingerprint=fp_, image=b64(pngs[1]))
    with http(server, server.role_tokens["verify"]) as h:
        for path, body in (("/v1/enrol", enrol), ("/v1/revoke", dict(person="roles"))):
            r = h.post(path, json=body)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
            assert "role 'verify'" in r.json()["detail"] and "--role" in r.json()["detail"]
        assert h.get("/v1/people/roles").json()["enrolled"] is False
    with http(server, server.role_tokens["enrol"]) as h:
        assert h.post("/v1/enrol", json=enrol).status_code == 200
        r = h.post("/v1/revoke", json=dict(person="roles"))
        assert r.status_code == 403 and "needs 'admin'" in r.json()["detail"]
    with http(server, server.role_tokens["verify"]) as h:
        assert h.post("/v1/verify", json=verify).json()["match"] is True
        assert "key_fingerprint" not in h.get("/v1/people/roles").json()    # a verify token cannot read it
        r = h.post("/v1/verify", json=dict(verify, key_fingerprint=Key.generate().fingerprint))
        assert r.status_code == 409 and "not the key 'roles' is enrolled under" in r.json()["detail"]
    with http(server) as h:
        assert h.get("/v1/people/roles").json()["key_fingerprint"] == fp_
    with httpx.Client(base_url=server.url, headers={"authorization": f"bearer  {server.token}"}) as h:
        assert h.post("/v1/revoke", json=dict(person="roles")).status_code == 200   # admin; scheme in any case
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)   # refused before the body is sent
    s.sendall(b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " +
              server.role_tokens["verify"].encode() + b"\r\nContent-Length: 900000\r\n\r\n{")
    assert _response(s)[0] == 403
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(["serve", "token", "list", "--db", server.db]) == 0
    assert {tuple(x.split("\t")) for x in out.getvalue().splitlines()} == {
        ("ci", "admin"), ("verify-station", "verify"), ("enrol-station", "enrol")}


def test_hostile_json_and_field_types_are_422(server):
    with http(server) as h:
        bomb = b"[" * 200_000 + b"]" * 200_000                   # deeper than any JSON parser recursion
        r = h.post("/v1/enrol", content=bomb, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        for dry in ("yes", 1, "true", None):                      # a boolean is a JSON boolean, nothing else
            r = h.post("/v1/enrol", json=dict(person="p422", key_fingerprint="4" * 16, dry_run=dry))
            assert r.status_code == 422 and "dry_run" in r.json()["detail"], (dry, r.text)
        r = h.post("/v1/enrol", json=dict(person="p422", key_fingerprint="4" * 16, images="not a list"))
        assert r.status_code == 422 and "images" in r.json()["detail"]
        r = h.post("/v1/enrol", json=dict(person="Zoe\u0301", key_fingerprint="4" * 16, dry_run=True))
        assert r.status_code == 422 and "NFC" in r.json()["detail"]      # says why a decomposed accent is refused
        r = h.post("/v1/enrol", json=dict(person="p422", key_fingerprint="4" * 16, images=[""] * 300_000))
        assert r.status_code == 422 and "at most 1000 items" in r.json()["detail"]   # refused while parsed
        assert h.get("/v1/person/misspelt-michelle").status_code == 404    # the log must not name her (below)
        long_id = "a" * 5000
        r = h.get("/v1/people/" + long_id)
        assert r.status_code == 422 and len(r.text) < 1000      # refused without echoing 5000 characters


def _with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]                           # right after IHDR


def test_png_metadata_bombs_are_refused_before_decoding(server, pngs):
    """Compressed metadata (zTXt text, an iCCP profile) would be inflated by the decoder (up to megabytes each):
    a protected image carries none, so the chunk is refused by name, from the chunk list."""
    import zlib
    blob = zlib.compress(b"\0" * 1_000_000, 9)
    many_ztxt = pngs[0]
    for i in range(100):
        many_ztxt = _with_chunk(many_ztxt, b"zTXt", b"k%d\0\0" % i + blob)
    cases = [(many_ztxt, "zTXt"), (_with_chunk(pngs[0], b"iCCP", b"icc\0\0" + blob), "iCCP"),
             (_with_chunk(pngs[0], b"iTXt", b"k\0\1\0\0\0" + blob), "iTXt")]
    with http(server) as h:
        for data, name in cases:
            r = h.post("/v1/verify", json=dict(person="pbomb", key_fingerprint="5" * 16, image=b64(data)))
            assert r.status_code == 422 and f"chunk '{name}'" in r.json()["detail"], r.text
        ok = _with_chunk(pngs[0], b"tEXt", b"Software\0faceanonymixer")    # plain small metadata is fine
        r = h.post("/v1/enrol", json=dict(person="pbomb", key_fingerprint=Key.generate().fingerprint,
                                          images=[b64(ok)]))
        assert r.status_code == 200, r.text


def test_revoke_racing_verify_never_lets_the_revoked_key_match(server, pngs):
    """Verifications under key k1 hammer the server from three connections while k1 is revoked (and the person
    re-enrolled under k2): every verification that starts after the revoke answered is a 403."""
    k1, k2 = Key.generate().fingerprint, Key.generate().fingerprint
    with http(server) as h:
        assert h.post("/v1/enrol", json=dict(person="racer", key_fingerprint=k1, images=[b64(pngs[0])])).is_success
    revoked_at, seen = [None], []

    def hammer():
        with http(server) as c:
            while True:
                t0 = time.monotonic()
                r = c.post("/v1/verify", json=dict(person="racer", key_fingerprint=k1, image=b64(pngs[1])))
                seen.append((t0, r.status_code))
                if revoked_at[0] is not None and t0 > revoked_at[0]:
                    return
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    [t.start() for t in threads]
    time.sleep(0.3)
    with http(server) as h:
        r = h.post("/v1/revoke", json=dict(person="racer", new_key_fingerprint=k2, images=[b64(pngs[0])]))
    revoked_at[0] = time.monotonic()
    [t.join(60) for t in threads]
    assert r.status_code == 200
    assert {code for t0, code in seen if t0 < revoked_at[0] - 5} <= {200}
    late = [code for t0, code in seen if t0 > revoked_at[0]]
    assert late and set(late) == {403}, late


# -- shutdown and logs (these two run last: they stop the module's server) ----------------------------------
def _raw_request(port: int, token: str, path: str, doc: dict) -> tuple[socket.socket, bytes]:
    """A socket with an HTTP request sent up to half of its body, and the rest of the body."""
    body = json.dumps(doc).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head + body[:len(body) // 2])
    return s, body[len(body) // 2:]


def _response(s: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            [h.split(b":")[1] for h in data.split(b"\r\n") if h.lower().startswith(b"content-length:")][0]):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_sigterm_lets_in_flight_enrolments_finish(server, pngs):
    """Three enrolments are in flight (half of each body sent) when the server gets SIGTERM: it stops taking new
    connections, waits for them, commits them, answers 200, then closes the database and exits."""
    people = [f"late{i}" for i in range(3)]
    socks = [_raw_request(server.port, server.token, "/v1/enrol",
                          dict(person=p, key_fingerprint=Key.generate().fingerprint, images=[b64(x) for x in pngs]))
             for p in people]
    time.sleep(1.0)                            # the idle server reads the headers: the requests are in flight
    server.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 30
    while "Shutting down" not in server.log.read_text() and time.monotonic() < end:
        time.sleep(0.05)
    refused = False                            # no new work is taken
    while not refused and time.monotonic() < end:
        try:
            httpx.get(server.url + "/healthz", timeout=5)
            time.sleep(0.05)
        except httpx.ConnectError:
            refused = True
    assert refused
    for s, rest in socks:
        s.sendall(rest)
    answers = [_response(s) for s, _ in socks]
    assert [a[0] for a in answers] == [200, 200, 200], answers
    assert all(a[1]["stored"] == 2 for a in answers)
    rc = server.stop()
    assert rc in (0, -signal.SIGTERM), rc     # uvicorn re-raises the signal after its graceful shutdown
    done = [x for x in server.lines() if x.get("event") == "shutdown"]
    assert done and done[-1]["unfinished"] == 0
    with Gallery(server.db) as st:             # committed before the process ended
        assert all(st.person(p)["templates"] == 2 for p in people)


def test_log_lines_are_json_without_tokens_or_person_ids(server, keys):
    server.stop()
    text = server.log.read_text()
    lines = server.lines()                           # every line parses as JSON
    reqs = [x for x in lines if x.get("event") == "request"]
    assert len(reqs) > 20 and {x["status"] for x in reqs} >= {200, 401, 403, 404, 409, 413, 415, 422}
    assert all(x["client"] in ("ci", "verify-station", "enrol-station", None) for x in reqs)
    for secret in (server.token, server.removed_token, *server.role_tokens.values(), "wrong-token-", "Bearer"):
        assert secret not in text
    for k in keys.values():
        assert Path(k).read_text().split()[-1] not in text
    for person in ("obama", "michelle", "raced", "racer", "pbomb", "org/unit/ana", "Zo", "misspelt"):
        assert person not in text
    from faceanonymixer.keys import read_key_file
    for k in keys.values():                          # nor key fingerprints (pseudonyms of people)
        assert read_key_file(k).fingerprint not in text


# -- no server needed ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_rate_limit_per_token_is_429_with_retry_after(tmp_path):
    from fastapi.testclient import TestClient

    from faceanonymixer.service.app import Service, create_app
    from faceanonymixer.service.config import load_service_config
    cfg = load_service_config(None, [f"db=sqlite:///{tmp_path / 'r.db'}", f"match.resolution={SIDE}",
                                     "limits.rate=0.5", "limits.burst=3"])
    svc = Service(cfg)
    a, b = svc.store.add_token("a"), svc.store.add_token("b")
    with TestClient(create_app(svc)) as tc:
        codes = [tc.get("/v1/info", headers={"authorization": f"Bearer {a}"}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = tc.get("/v1/info", headers={"authorization": f"Bearer {a}"})
        assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert tc.get("/v1/info", headers={"authorization": f"Bearer {b}"}).status_code == 200   # per token
        assert tc.get("/healthz").status_code == 200                                             # no token


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_score_is_told_only_when_the_operator_says_so(tmp_path, pngs):
    """A verify token that gets scores can hill-climb a synthetic probe towards anyone's templates (the person's
    fingerprint is public): by default the answer is the decision only; match.reveal_score=true adds the score."""
    from fastapi.testclient import TestClient

    from faceanonymixer.service.app import Service, create_app
    from faceanonymixer.service.config import load_service_config
    for reveal in (False, True):
        svc = Service(load_service_config(None, [f"db=sqlite:///{tmp_path / f'{reveal}.db'}", "match.threshold=-1",
                                                 f"match.resolution={SIDE}", f"match.reveal_score={reveal}"]))
        tok, k = svc.store.add_token("a", "enrol"), Key.generate().fingerprint
        with TestClient(create_app(svc)) as tc:
            h = {"authorization": f"Bearer {tok}"}
            assert tc.get("/v1/info", headers=h).json()["reveal_score"] is reveal
            assert tc.post("/v1/enrol", headers=h, json=dict(person="s", key_fingerprint=k,
                                                             images=[b64(pngs[0])])).status_code == 200
            doc = tc.post("/v1/verify", headers=h, json=dict(person="s", key_fingerprint=k, image=b64(pngs[1]))).json()
            assert doc["match"] is True and (isinstance(doc["score"], float) if reveal else doc["score"] is None)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_broken_database_is_503_without_its_name_or_error(tmp_path):
    """The database's location and error are the operator's (logged), never told to a client (healthz needs no
    token)."""
    from fastapi.testclient import TestClient

    from faceanonymixer.service.app import Service, create_app
    from faceanonymixer.service.config import load_service_config
    path = tmp_path / "secret-location.db"
    svc = Service(load_service_config(None, [f"db=sqlite:///{path}", f"match.resolution={SIDE}"]))
    tok = svc.store.add_token("a")
    with TestClient(create_app(svc)) as tc:
        assert tc.get("/healthz").status_code == 200
        svc.store.engine.dispose()
        for p in tmp_path.glob("secret-location.db*"):
            p.write_bytes(b"not a database any more " * 100)
        for r in (tc.get("/healthz"), tc.get("/v1/info", headers={"authorization": f"Bearer {tok}"})):
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            assert "secret-location" not in r.text and "not a database" not in r.text


def test_store_schema_upgrade_and_foreign_databases(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Gallery(url, create=True, target_version=1) as s:   # a gallery made before API tokens (schema v1)
        s.enrol("ana", "a" * 16, "sface", np.eye(1, 128, dtype=np.float32), [b"png"])
        with s.engine.connect() as c:
            assert s.version(c) == 1
    with Gallery(url, target_version=2) as s:           # schema v2: tokens without roles
        from sqlalchemy import text
        with s.engine.begin() as c:
            c.execute(text("INSERT INTO fam_tokens VALUES ('old', 'h' , 0)"))
    with Gallery(url) as s:                          # opened by this version: upgraded, data kept
        assert s.stats() == dict(people=1, templates=1, revoked_keys=0, schema=SCHEMA_VERSION)
        assert s.token_client(s.add_token("t")) == ("t", "verify")
        assert [(n, r) for n, _, r in s.tokens()] == [("old", "admin"), ("t", "verify")]  # old: full rights kept
        from sqlalchemy import text
        with s.engine.begin() as c:
            c.execute(text("UPDATE fam_schema SET version = 99"))
    with pytest.raises(Exception, match="newer than this faceanonymixer"):
        Gallery(url)
    import sqlite3
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE fam_people (x)")
    with pytest.raises(Exception, match="not a faceanonymixer service gallery"):
        Gallery(f"sqlite:///{foreign}")
    with pytest.raises(Exception, match="only sqlite"):
        Gallery("mysql://u@h/db")


def test_the_database_itself_refuses_a_revoked_key_and_foreign_templates(tmp_path):
    """The rules are constraints of the schema, not only checks in our code: raw SQL cannot enrol a revoked key,
    store a template under another key than the person's, or give one key to two people."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    with Gallery(f"sqlite:///{tmp_path / 'g.db'}", create=True) as s:
        e = np.eye(1, 128, dtype=np.float32)
        s.enrol("ana", "a" * 16, "sface", e, [b"1"])
        s.revoke("ana", "b" * 16, "sface", e, [b"2"])
        with pytest.raises(RevokedKeyError, match="revoked"):
            s.enrol("bob", "a" * 16, "sface", e, [b"3"])
        for sql in ("INSERT INTO fam_people VALUES ('bob', 'aaaaaaaaaaaaaaaa', 'active', 'sface', 0)",
                    "INSERT INTO fam_templates (person, key_fingerprint, matcher, embedding, digest, created) "
                    "VALUES ('ana', 'cccccccccccccccc', 'sface', x'00', 'd', 0)",
                    "INSERT INTO fam_people VALUES ('carl', 'bbbbbbbbbbbbbbbb', 'active', 'sface', 0)"):
            with pytest.raises(IntegrityError):
                with s.engine.begin() as c:
                    c.execute(text(sql))


def test_faceanonymixer_imports_without_the_service_extra_and_serve_says_what_to_install():
    code = ("import sys\n"
            "for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'httpx'): sys.modules[m] = None\n"
            "import faceanonymixer, faceanonymixer.workflow\n"
            "from faceanonymixer.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + sys.path))
    r = subprocess.run([sys.executable, "-c", code, "serve"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "pip install 'faceanonymixer[service]'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", code, "client", "status", "x", "--server", "http://127.0.0.1:9"],
                       env=dict(env, FACEANONYMIXER_TOKEN="t" * 20), capture_output=True, text=True)
    assert r.returncode == 2 and "faceanonymixer[service]" in r.stderr, r.stderr
