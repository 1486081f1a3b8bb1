"""The verification service against hostile or careless users, integrators and servers, without a server process:
the client against a fake server that lies (a reply is checked, never trusted), the client's own refusals (no key
and no original leaves the process), the body gate in front of the routes (ASGI, in process), and the database
URL and file handling of `faceanonymixer serve` (no password on the command line or in a message, private files).
The attacks that need the real server are in tests/test_service.py."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _tiny import run_cli, tiny_protector

from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.keys import Key, write_key_file
from faceanonymixer.registry import data_dir
from faceanonymixer.service.client import Client
from faceanonymixer.service.limits import BodyLimit
from faceanonymixer.gallery import Gallery, StoreUnavailable, engine_url

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLES = data_dir() / "samples"
PASSWORD = "S3cretPassw0rd"


class FakeServer:
    """A server that speaks the API's shape but answers what the test says (``verify``: its reply to every POST
    that is not a dry run); it records every request body it receives in ``seen``."""

    def __init__(self, verify: dict | list):  # the reply to a POST that is not a dry run
        self.seen: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, doc):
                b = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def do_GET(self):
                self._send(dict(api="1", matcher="sface", resolution=32, threshold=0.5))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.seen.append(body)
                if body.get("dry_run"):
                    return self._send(dict(person=body["person"], ok=True, dry_run=True))
                self._send(outer.verify)

        self.verify = verify
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tiny():
    return tiny_protector()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("k") / "k.key"
    write_key_file(path, Key.generate())
    return str(path)


# -- the client trusts no reply -----------------------------------------------------------------------------
@pytest.mark.parametrize("reply, exit_code", [
    ("honest-no", 1),                                            # a well-formed "no match": exit 1
    (dict(match=True, score=None, threshold=0.5), 0),            # the default server tells no score
    (dict(match=False, score=None, threshold=0.5), 1),
    (dict(match="false", score=0.1, threshold=0.5), 2),          # a string is not a boolean (it is truthy)
    (dict(match=True, score=-0.9, threshold=0.5), 2),            # match that does not follow from the score
    ({}, 2),                                                     # nothing: an error, not exit 1 (= "no match")
    (dict(match=True, score=0.9, threshold=0.5, person="someone-else"), 2),
    ([True], 2),
])
def test_client_verify_exits_2_on_a_malformed_or_inconsistent_reply(tiny, key_file, monkeypatch, capsys, reply,
                                                                     exit_code):
    from faceanonymixer.keys import read_key_file
    fp = read_key_file(key_file).fingerprint
    if reply == "honest-no":
        reply = dict(person="ana", match=False, score=0.1, threshold=0.5, key_fingerprint=fp, templates=1)
    elif isinstance(reply, dict) and reply:
        reply = dict(dict(person="ana", key_fingerprint=fp, templates=1), **reply)
    srv = FakeServer(reply)
    monkeypatch.setenv("FACEANONYMIXER_TOKEN", "t" * 43)
    try:
        code = run_cli(["client", "verify", "ana", str(SAMPLES / "obama.jpg"), "--key", key_file, "--server",
                        srv.url], tiny)
    finally:
        srv.close()
    out = capsys.readouterr().out
    assert code == exit_code, out
    if exit_code == 2:
        assert "malformed answer" in out or "unexpected answer" in out


def test_client_revoke_refuses_a_reply_that_would_print_escape_codes():
    srv = FakeServer(dict(person="ana", revoked_key_fingerprint="\x1b]0;owned\x07", deleted=1, stored=0))
    try:
        with Client(srv.url, "t" * 43) as c, pytest.raises(FaceAnonyMixerError, match="not a fingerprint"):
            c.revoke_pngs("ana")
    finally:
        srv.close()


def test_client_refuses_to_send_a_key_or_an_original_photo():
    """An integrator's mistakes are refused before anything is sent: a key (or anything but a 16-hex fingerprint)
    where the fingerprint belongs, a JPEG original (or a path) where a protected PNG belongs."""
    srv = FakeServer({})
    key = Key.generate()
    jpeg = (SAMPLES / "obama.jpg").read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    try:
        with Client(srv.url, "t" * 43) as c:
            for call in (lambda: c.enrol_pngs("ana", key._secret.hex(), [png]),
                         lambda: c.enrol_pngs("ana", key._secret, [png]),
                         lambda: c.verify_png("ana", key.fingerprint.upper() + "00", png),
                         lambda: c.revoke_pngs("ana", key._secret.hex()[:20], [png]),
                         lambda: c.enrol_pngs("ana", key.fingerprint, [jpeg]),
                         lambda: c.verify_png("ana", key.fingerprint, jpeg),
                         lambda: c.enrol_pngs("ana", key.fingerprint, [str(SAMPLES / "obama.jpg")])):
                with pytest.raises(FaceAnonyMixerError, match="nothing was sent") as e:
                    call()
                assert key._secret.hex() not in str(e.value)
    finally:
        srv.close()
    assert srv.seen == []


def test_client_warns_when_the_token_would_travel_over_plain_http(caplog):
    with caplog.at_level(logging.WARNING, logger="faceanonymixer.service.client"):
        Client("http://127.0.0.1:9", "t" * 43).close()
        Client("http://localhost:9", "t" * 43).close()
        assert not caplog.records
        Client("https://gallery.example:9", "t" * 43).close()
        assert not caplog.records
        Client("http://gallery.example:9", "t" * 43).close()
    assert len(caplog.records) == 1 and "plain http" in caplog.records[0].getMessage()


# -- the body gate (ASGI, in process) -----------------------------------------------------------------------
def test_a_body_that_trickles_in_gets_408_and_is_not_kept():
    """A client that sends the headers and then (almost) nothing holds the request for body_timeout_s at most."""
    called, sent = [], []

    async def app(scope, receive, send):      # the application behind the gate: must never be reached
        called.append(scope)

    async def receive():
        await asyncio.sleep(3600)              # the body never comes

    async def send(msg):
        sent.append(msg)

    gate = BodyLimit(app, max_bytes=10_000, timeout_s=0.2)
    scope = dict(type="http", method="POST", path="/v1/enrol", headers=[(b"content-length", b"5000")])
    asyncio.run(asyncio.wait_for(gate(scope, receive, send), 10))
    assert not called and sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"


# -- the database URL and file ------------------------------------------------------------------------------
def _serve(*argv, env=None):
    """`faceanonymixer serve ...` in process through the real main (its messages on stderr)."""
    from faceanonymixer.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["serve", *argv])
    finally:
        os.environ.clear()
        os.environ.update(old)
    return code, out.getvalue(), err.getvalue()


def test_a_database_password_is_never_taken_on_the_command_line_nor_shown(tmp_path):
    url = f"postgresql://fam:{PASSWORD}@127.0.0.1:1/gallery"
    for argv in (["--db", url], ["--set", f"db={url}"], ["--db", f"postgresql://fam:{PASSWORD}@h:notaport/g"]):
        code, out, err = _serve("token", "list", *argv)
        assert code == 2 and "never taken on the command line" in err and "--db-env" in err, err
        assert PASSWORD not in out + err
    # from an environment variable: accepted; a connection failure names the database without the password
    code, out, err = _serve("token", "list", "--db-env", "FAM_DB", env=dict(FAM_DB=url))
    assert code == 2 and "127.0.0.1" in err and PASSWORD not in out + err, err
    code, out, err = _serve("token", "list", "--db-env", "FAM_DB", env=dict(FAM_DB="postgresql://u:pw@h:xx/db"))
    assert code == 2 and "not valid (value not shown" in err and "pw@" not in err, err
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code, out, err = _serve("token", "add", "ci", "--db-env", "FAM_DB", env=dict(FAM_DB=db))
    assert code == 0, err
    code, out, err = _serve("token", "list", "--db-env", url)            # a URL where the variable's name goes
    assert code == 2 and PASSWORD not in out + err and "NAME of an environment variable" in err
    # a --db URL is taken as given (it is not parsed as YAML: "sqlite:///a: b" is a file name, not a mapping)
    code, out, err = _serve("token", "list", "--db", f"sqlite:///{tmp_path / 'a: b.db'}")
    assert code == 0 and (tmp_path / "a: b.db").is_file(), err


def test_unusable_database_urls_and_files_are_clear_errors(tmp_path, caplog):
    for url, expected in (("sqlite:///", "names no file"), ("sqlite://", "names no file"),
                          ("sqlite:///:memory:", "names no file"), ("garbage", "not valid"),
                          ("sqlite:///file:x?mode=memory&uri=true", "not supported")):
        with pytest.raises(FaceAnonyMixerError, match=expected):
            Gallery(engine_url(url), create=True)          # the service takes --db as a URL
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, it is a text file")
    with pytest.raises(StoreUnavailable, match="file is not a database"):
        Gallery(f"sqlite:///{junk}")
    assert junk.read_bytes().startswith(b"this is not")                 # and it was not changed
    with caplog.at_level(logging.INFO, logger="faceanonymixer.gallery"):
        with Gallery(f"sqlite:///{tmp_path / 'new.db'}", create=True) as s:   # a new gallery: made private, not "upgraded"
            s.add_token("t")
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]
    for name in ("new.db", "new.db-wal", "new.db-shm"):
        p = tmp_path / name
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, name
    os.chmod(tmp_path / "new.db", 0o644)                                # an older gallery, readable by all: said
    with caplog.at_level(logging.WARNING, logger="faceanonymixer.gallery"):
        Gallery(f"sqlite:///{tmp_path / 'new.db'}").close()
    assert any("can be read by other users" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o644  # and left as the operator set it


def test_only_loopback_addresses_count_as_private_for_the_listen_warning():
    from faceanonymixer.service.config import loopback
    assert all(loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "gallery.example", ""))
