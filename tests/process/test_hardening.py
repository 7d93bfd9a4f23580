"""Secrets (issue 7, item 2): the DSN comes from a file, and its password never shows up.

A real `serve` process connects as the read-only role of sql/roles.sql with a real password
(pg_hba asks for SCRAM for that role), at log level debug. Then the password is changed under
it and the server is stopped and started, so every kind of connection error goes through the
logs, /healthz, the landing page and /metrics. None of them, nor the process's command line or
environment, nor a startup error, may contain the password, raw or URL-encoded.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from exporter.demo.embedded import EmbeddedPostgres
from tests.support.database import seeded_own_postgres
from tests.support.exposition import sample_value
from tests.support.hardening import apply_roles
from tests.support.process import ExporterProcess, free_port, http_get, run_cli

# Characters that need URL-encoding, so both spellings are searched for.
SECRET = "Sx9-p@ss:w/rd%7e-unique"
ENCODED = urllib.parse.quote(SECRET, safe="")


@pytest.fixture
def password_postgres() -> Iterator[EmbeddedPostgres]:
    """An own server where cj_health_ro must authenticate with SCRAM (others stay trusted)."""
    pg = seeded_own_postgres()
    try:
        result = apply_roles(pg.url(), ro_password=SECRET)
        assert result.returncode == 0, result.stderr
        hba = pg.data_dir / "pg_hba.conf"
        hba.write_text("local all cj_health_ro scram-sha-256\n" + hba.read_text())
        admin(pg, "SELECT pg_reload_conf()")
        yield pg
    finally:
        pg.close()


def admin(pg: EmbeddedPostgres, sql: str) -> None:
    engine = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def dsn_file(folder: Path, pg: EmbeddedPostgres, password: str) -> Path:
    url = pg.url().set(username="cj_health_ro", password=password)
    path = folder / "dsn"
    path.write_text(url.render_as_string(hide_password=False) + "\n")
    path.chmod(0o600)
    return path


def wait_for_error(exp: ExporterProcess, fragment: str, timeout: float = 15) -> None:
    """Until /healthz reports a last_error containing `fragment` (and cj_health_up is 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = http_get(f"{exp.url}/healthz")
        health = json.loads(body)
        if status == 200 and not health["up"] and fragment in (health["last_error"] or ""):
            return
        time.sleep(0.1)
    raise AssertionError(f"no error with {fragment!r}; last /healthz: {body!r}")


def no_secret(text_: str, where: str) -> None:
    assert SECRET not in text_ and ENCODED not in text_, f"the password leaked into {where}"


def test_password_never_leaks(password_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    pg = password_postgres
    path = dsn_file(tmp_path, pg, SECRET)
    # The DSN comes from CJ_HEALTH_DSN_FILE only (no --dsn).
    exp = ExporterProcess(None, poll_interval=0.3, env={"CJ_HEALTH_DSN_FILE": str(path)},
                          extra_args=["--log-level", "debug", "--stale-after", "1000"])
    seen: list[tuple[str, str]] = []

    def collect(phase: str) -> None:
        for page in ("/", "/healthz", "/metrics"):
            status, headers, body = http_get(f"{exp.url}{page}")
            assert status == 200
            seen.append((f"{page} ({phase})", body.decode() + str(headers)))

    with exp:
        assert exp.proc is not None
        collect("up")
        # 1. The password is changed under the running exporter: every reconnect now fails
        #    authentication.
        admin(pg, "ALTER ROLE cj_health_ro PASSWORD 'rotated-elsewhere'")
        admin(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE usename = 'cj_health_ro'")
        wait_for_error(exp, "password authentication failed")
        collect("wrong password")
        # 2. The server goes away and comes back (still the wrong password).
        pg.stop_server()
        wait_for_error(exp, "No such file or directory")  # the socket is gone
        collect("server down")
        pg.start_server()
        # 3. The password is set back: the exporter recovers by itself.
        admin(pg, f"ALTER ROLE cj_health_ro PASSWORD '{SECRET}'")
        exp.wait_for(lambda b: sample_value(b, "cj_health_up") == 1, 15)
        collect("recovered")
        for name in ("cmdline", "environ"):
            no_secret(Path(f"/proc/{exp.proc.pid}/{name}").read_bytes().decode(
                errors="replace"), f"/proc/PID/{name}")
    output = exp.output()
    assert "password authentication failed" in output, "the auth failures were not logged"
    assert "DEBUG" in output  # the most talkative level was on
    no_secret(output, "the log")
    for where, content in seen:
        no_secret(content, where)
    assert any("password authentication failed" in content for where, content in seen
               if where.startswith("/healthz")), "the error must be shown, just not the secret"


def test_startup_errors_never_show_the_password(password_postgres: EmbeddedPostgres,
                                                tmp_path: Path) -> None:
    pg = password_postgres
    wrong = pg.url().set(username="cj_health_ro", password=SECRET + "-wrong")
    path = dsn_file(tmp_path, pg, SECRET + "-wrong")
    listen = f"127.0.0.1:{free_port()}"
    for args in (["--dsn-file", str(path)],
                 ["--dsn", wrong.render_as_string(hide_password=False)],
                 ["--dsn", "postgresql://cj_health_ro:" + ENCODED + "@/x?host=/nonexistent"]):
        result = run_cli("serve", *args, "--web.listen-address", listen, "--log-level", "debug")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "***" in result.stderr or "cannot" in result.stderr
        no_secret(result.stdout + result.stderr, f"the startup error of {args[0]}")


def test_dsn_file_beats_nothing_and_conflicts_with_dsn(tmp_path: Path) -> None:
    """CJ_HEALTH_DSN_FILE plus a --dsn is refused rather than silently picking one."""
    path = tmp_path / "dsn"
    path.write_text("postgresql://u@h/d")
    result = run_cli("serve", "--dsn", "postgresql://u@h/d2",
                     env={"CJ_HEALTH_DSN_FILE": str(path)})
    assert result.returncode == 2
    assert "either dsn or dsn_file" in result.stderr
