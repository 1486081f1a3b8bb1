"""The real-server tests of tests/test_service.py against a real PostgreSQL: a throw-away cluster (initdb +
pg_ctl) in a temporary folder, on a free port, listening only on a unix socket in that folder. Skips with the
reason when the PostgreSQL server binaries are missing, or when we are root and there is no unprivileged user
to run them as (initdb refuses to run as root)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
# the real-server tests, in test_service.py's order (the last two stop the module's server)
from test_service import free_port, keys, pngs, server, tiny  # noqa: F401 - fixtures
from test_service import test_client_enrols_verifies_and_revokes_the_sample_photos  # noqa: F401
from test_service import test_wrong_missing_or_removed_token_is_401  # noqa: F401
from test_service import test_oversized_requests_and_images_are_413  # noqa: F401
from test_service import test_non_png_is_415  # noqa: F401
from test_service import test_malformed_requests_are_422  # noqa: F401
from test_service import test_person_ids_with_slashes_and_unicode_round_trip  # noqa: F401
from test_service import test_same_templates_twice_are_stored_once_and_keys_belong_to_one_person  # noqa: F401
from test_service import test_concurrent_enrols_of_one_person_with_two_keys_let_one_in  # noqa: F401
from test_service import test_a_bad_token_is_refused_from_the_headers_before_any_body_is_read  # noqa: F401
from test_service import test_token_roles_limit_who_may_change_the_gallery  # noqa: F401
from test_service import test_revoke_racing_verify_never_lets_the_revoked_key_match  # noqa: F401
from test_service import test_sigterm_lets_in_flight_enrolments_finish  # noqa: F401
from test_service import test_log_lines_are_json_without_tokens_or_person_ids  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: PATH, `pg_config --bindir`, /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    cands = []
    if shutil.which("pg_config"):
        try:
            cands.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                        timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in cands:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _runner() -> tuple[list[str], int | None]:
    """(command prefix, uid to own the cluster folder): as ourselves, or as 'postgres' via runuser when root."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    for user in ("postgres", "nobody"):
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            continue
        if runuser:
            return [runuser, "-u", user, "--"], uid
    pytest.skip("running as root (initdb refuses root) and no 'postgres' user with runuser to run it as")


@pytest.fixture(scope="module")
def db_url():
    """A fresh PostgreSQL cluster for this module; its URL (psycopg 3 over the unix socket)."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config or in "
                    "/usr/lib/postgresql/*/bin")
    pytest.importorskip("psycopg", reason="psycopg (the service extra) is not installed")
    prefix, uid = _runner()
    folder = Path(tempfile.mkdtemp(prefix="fam-pg-"))
    if uid is not None:
        os.chown(folder, uid, -1)
    data, port = folder / "data", free_port()

    def pg(*argv):
        r = subprocess.run(prefix + [str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                           cwd=folder)
        if r.returncode != 0:
            log = (folder / "log").read_text() if (folder / "log").exists() else ""
            raise AssertionError(f"{argv[0]} failed ({r.returncode}): {r.stderr}\n{log}")
    try:
        pg("initdb", "-D", str(data), "-A", "trust", "-U", "fam", "-E", "UTF8", "--no-sync", "--locale=C")
        pg("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
           f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off", "start")
        try:
            yield f"postgresql://fam@/postgres?host={folder}&port={port}"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_cluster_is_postgresql(db_url):
    from sqlalchemy import text

    from faceanonymixer.gallery import SCHEMA_VERSION, Gallery
    with Gallery(db_url) as s:
        with s.engine.connect() as c:
            assert "PostgreSQL" in c.execute(text("SELECT version()")).scalar_one()
        assert s.stats()["schema"] == SCHEMA_VERSION


def test_the_database_itself_refuses_a_revoked_key_and_foreign_templates_on_postgresql(db_url):
    import numpy as np
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from faceanonymixer.gallery import Gallery
    with Gallery(db_url) as s:
        e = np.eye(1, 128, dtype=np.float32)
        s.enrol("pg-ana", "a" * 16, "sface", e, [b"1"])
        s.revoke("pg-ana", "b" * 16, "sface", e, [b"2"])
        for sql in ("INSERT INTO fam_people VALUES ('pg-bob', 'aaaaaaaaaaaaaaaa', 'active', 'sface', 0)",
                    "INSERT INTO fam_templates (person, key_fingerprint, matcher, embedding, digest, created) "
                    "VALUES ('pg-ana', 'cccccccccccccccc', 'sface', '\\x00'::bytea, 'd', 0)",
                    "INSERT INTO fam_people VALUES ('pg-carl', 'bbbbbbbbbbbbbbbb', 'active', 'sface', 0)"):
            with pytest.raises(IntegrityError):
                with s.engine.begin() as c:
                    c.execute(text(sql))


def test_the_local_commands_use_a_postgresql_gallery(db_url, capsys):
    """`--gallery URL`: the local gallery commands on the service's PostgreSQL gallery (one gallery module)."""
    import numpy as np
    from _tiny import run_cli

    from faceanonymixer.gallery import Gallery, png_bytes
    with Gallery(db_url) as s:
        s.enrol("pg-cli", "d" * 16, "sface", np.eye(1, 8, dtype=np.float32), [png_bytes(np.zeros((4, 4, 3), np.uint8))])
    capsys.readouterr()
    assert run_cli(["gallery", "list", "--gallery", db_url]) == 0
    assert f"pg-cli\tkey {'d' * 16}\tsface\t1 template(s)" in capsys.readouterr().out
    assert run_cli(["revoke", "pg-cli", "--gallery", db_url]) == 0
    capsys.readouterr()
    rc = run_cli(["gallery", "check", "--gallery", db_url])
    out, err = capsys.readouterr()
    # the only findings may be the fake PNGs (b"1", b"2") that the constraint test above stores for pg-ana
    assert all("'pg-ana': image is not a valid PNG" in line for line in err.splitlines()[1:]), err
    assert (rc, "ok (schema v4" in out) == ((1, False) if err else (0, True))
