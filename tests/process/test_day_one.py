"""An operator's first day with real processes (issue 13): `serve` starts whatever the
database's state and recovers without a restart; a missing grant is reported as one; the
Kubernetes service-link variables do not stop it; `healthcheck` works under TLS and basic auth
(as the Dockerfile runs it); `check-config`; `remediate` finds batches as `inspect` does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from sqlalchemy import create_engine, text

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres
from tests.support.database import SeededDb, Server, drop_database, new_database, url_string
from tests.support.exposition import parse
from tests.support.hardening import (
    Pki,
    apply_roles,
    drop_roles,
    make_pki,
    wait_until,
)
from tests.support.paths import ROOT
from tests.support.process import ExporterProcess, free_port, http_get

K8S_SERVICE_LINKS = {
    "CJ_HEALTH_EXPORTER_SERVICE_HOST": "10.0.0.12",
    "CJ_HEALTH_EXPORTER_SERVICE_PORT": "10124",
    "CJ_HEALTH_EXPORTER_PORT": "tcp://10.0.0.12:10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP": "tcp://10.0.0.12:10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_PROTO": "tcp",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_PORT": "10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_ADDR": "10.0.0.12",
}


def metric(body: bytes | str, name: str, **labels: str) -> float | None:
    return parse(body).value(name, **labels)


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


class StartingExporter(ExporterProcess):
    """`serve` that is not expected to have polled successfully: ready once /metrics answers."""

    def __enter__(self) -> StartingExporter:
        assert self.args
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        self.wait_for(lambda body: b"cj_health_up" in body, 30)
        return self


def health(exp: ExporterProcess) -> dict[str, object]:
    status, _, body = http_get(f"{exp.url}/healthz")
    assert status == 200
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


def test_serve_starts_on_a_closed_port_and_recovers_when_the_database_appears(
        own_postgres: EmbeddedPostgres) -> None:
    port = free_port()  # nothing listens here yet
    dsn = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    started = time.monotonic()
    with StartingExporter(dsn, poll_interval=10.0,
                          extra_args=["--stale-after", "1000"]) as exp:
        # retried with backoff (0 s, ~1 s, ~3 s, ...), not once per 10 s interval
        body = exp.wait_for(lambda b: (metric(b, 'cj_health_poll_errors_total',
                                              reason="connection") or 0) >= 3, 20)
        assert time.monotonic() - started < 9
        assert metric(body, "cj_health_up") == 0
        assert b"cj_batch_problem{" not in body
        assert health(exp)["status"] == "degraded"
        assert "connection refused" in str(health(exp)["last_error"]).lower()
        assert http_get(f"{exp.url}/-/ready")[0] == 503
        # The database appears on that port; no restart.
        own_postgres.stop_server()
        own_postgres.start_server(tcp_port=port)
        body = exp.wait_for(lambda b: metric(b, "cj_health_up") == 1, 30)
        assert b'problem="wedged"' in body
        assert health(exp)["status"] == "ok"
        assert http_get(f"{exp.url}/-/ready")[0] == 200
        assert exp.stop() == 0
    log = exp.output()
    assert "poll recovered after" in log and "Traceback" not in log
    # one warning when the outage starts (and when its cause changes), not one per attempt
    assert 1 <= len(re.findall(r"poll failed", log)) <= 2, log


def test_serve_without_views_then_install_view_recovers(pg_server: Server) -> None:
    name = new_database(pg_server, template="template0")
    url = url_string(pg_server.url(name))
    engine = create_engine(url)
    with engine.begin() as conn:
        sqlfiles.load_reference_schema(conn)  # the CJ tables, but no views yet
    engine.dispose()
    try:
        with StartingExporter(url, poll_interval=1.0) as exp:
            exp.wait_for(lambda b: (metric(b, 'cj_health_poll_errors_total',
                                           reason="query") or 0) >= 1, 20)
            assert "run `cj-health-exporter install-view`" in str(health(exp)["last_error"])
            engine = create_engine(url)
            with engine.begin() as conn:
                sqlfiles.install_views(conn)
                scenarios.seed_demo(conn)
            engine.dispose()
            body = exp.wait_for(lambda b: metric(b, "cj_health_up") == 1, 20)
            assert b'problem="wedged"' in body
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def granted_db(pg_server: Server) -> Iterator[tuple[str, str]]:
    """A seeded database with sql/roles.sql applied: (cj_health_ro url, url of a login with no
    grant at all)."""
    name = new_database(pg_server)
    admin = pg_server.url(name)
    engine = create_engine(admin)
    with engine.begin() as conn:
        scenarios.seed_demo(conn)
    engine.dispose()
    try:
        result = apply_roles(admin, ro_password="ro-pw-1")
        assert result.returncode == 0, result.stderr
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("DROP ROLE IF EXISTS cjh_nobody"))
            conn.execute(text("CREATE ROLE cjh_nobody LOGIN PASSWORD 'nb-pw-1'"))
        engine.dispose()
        yield (url_string(admin.set(username="cj_health_ro", password="ro-pw-1")),
               url_string(admin.set(username="cjh_nobody", password="nb-pw-1")))
    finally:
        drop_database(pg_server, name)
        drop_roles(pg_server.url(), "cjh_nobody", "cj_health_operator", "cj_health_ro",
                   "cj_health_remediator")


def test_a_missing_grant_is_reported_as_a_missing_grant(granted_db: tuple[str, str]) -> None:
    ro, nobody = granted_db
    result = cli("serve", "--dsn", nobody, "--web.listen-address", "127.0.0.1:0",
                 "--fail-fast")
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert "permission denied for view cj_batch_health" in line
    assert "lacks that grant" in line and "roles.sql" in line
    assert "install-view" not in line
    # inspect under the polling role: one line naming the grant inspect needs, no traceback
    result = cli("inspect", "1", "--dsn", ro)
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    assert "SELECT (event_type, aggregate_id, event_data, created_at, published_at, " \
           "retry_count, last_error) ON event_outbox" in line
    assert "cj_health_operator" in line and "Traceback" not in result.stderr


def test_kubernetes_service_links_do_not_stop_serve(seeded_db: SeededDb) -> None:
    with ExporterProcess(seeded_db.url, env=K8S_SERVICE_LINKS) as exp:
        assert metric(exp.wait_for(lambda b: True, 5), "cj_health_up") == 1
    lines = [line for line in exp.output().splitlines() if "service-link" in line]
    assert len(lines) == 1 and "level=warning" in lines[0]
    assert "CJ_HEALTH_EXPORTER_PORT_10124_TCP_ADDR" in lines[0]


def test_json_logs_from_a_real_process(seeded_db: SeededDb) -> None:
    with ExporterProcess(seeded_db.url, extra_args=["--log.format", "json"]) as exp:
        exp.wait_for(lambda b: True, 5)
    lines = [line for line in exp.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["msg"].startswith("serving http://127.0.0.1:") for r in records)


# ---- healthcheck ------------------------------------------------------------------------------

PROBE_PASSWORD = "probe-pw-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK command of the Dockerfile, exactly as written there (exec form)."""
    text_ = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[[^\n]*\])$", text_, re.M)
    assert match, "the Dockerfile has no HEALTHCHECK ... CMD [...]"
    argv = json.loads(match.group(1))
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def probe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the Dockerfile's probe with this venv's cj-health-exporter first on PATH."""
    bindir = str(Path(sys.executable).parent)
    assert shutil.which(argv[0], path=bindir), f"{argv[0]} is not installed in {bindir}"
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", **env})


def test_dockerfile_healthcheck_under_tls_and_basic_auth(pki: Pki, seeded_db: SeededDb,
                                                         tmp_path: Path) -> None:
    argv = dockerfile_healthcheck()
    assert argv[:2] == ["cj-health-exporter", "healthcheck"]
    hashed = bcrypt.hashpw(PROBE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server.cert}\n"
                   f"  key_file: {pki.server.key}\nbasic_auth_users:\n  probe: '{hashed}'\n")
    creds = tmp_path / "probe-credentials"
    creds.write_text(f"probe:{PROBE_PASSWORD}\n")
    port = free_port()
    # the container's environment: what serve reads, the probe reads
    env = {"CJ_HEALTH_WEB_CONFIG_FILE": str(web),
           "CJ_HEALTH_LISTEN_ADDRESS": f":{port}",
           "CJ_HEALTH_HEALTHCHECK_CREDENTIALS_FILE": str(creds)}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--dsn",
                                 seeded_db.url], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    try:
        wait_until(lambda: probe(argv, env).returncode == 0, 20, "the probe to pass")
        result = probe(argv, env)
        assert result.stdout.strip().splitlines() == [
            f"ok: https://127.0.0.1:{port}/healthz answered 200 (status ok)"]
        ready = probe([*argv, "--ready"], env)
        assert ready.returncode == 0, ready.stdout
        # without the credentials: exit 1, one line saying what is missing
        bad = probe(argv, {k: v for k, v in env.items() if "CREDENTIALS" not in k})
        assert bad.returncode == 1 and len(bad.stdout.strip().splitlines()) == 1
        assert "healthcheck.credentials_file" in bad.stdout
        creds.write_text("probe:wrong\n")
        bad = probe(argv, env)
        assert bad.returncode == 1 and "answered 401" in bad.stdout
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in log.read_text()
    gone = probe(argv, env)  # the process is gone: unhealthy, one line, exit 1 (never 2)
    assert gone.returncode == 1 and len(gone.stdout.strip().splitlines()) == 1
    assert "ConnectionRefusedError" in gone.stdout


def test_healthcheck_ready_follows_staleness(own_postgres: EmbeddedPostgres) -> None:
    dsn = url_string(own_postgres.url())
    with ExporterProcess(dsn, poll_interval=0.5, extra_args=["--stale-after", "2"]) as exp:
        listen = ["--web.listen-address", f"127.0.0.1:{exp.port}"]
        assert cli("healthcheck", "--ready", *listen).returncode == 0
        own_postgres.stop_server()
        exp.wait_for(lambda b: metric(b, "cj_health_snapshot_stale") == 1, 20)
        ready = cli("healthcheck", "--ready", *listen)
        assert ready.returncode == 1 and "answered 503 (status stale)" in ready.stdout
        alive = cli("healthcheck", *listen)
        assert alive.returncode == 0 and "(status stale)" in alive.stdout
        own_postgres.start_server()


# ---- check-config and remediate -------------------------------------------------------------

def test_check_config(seeded_db: SeededDb, tmp_path: Path, pki: Pki) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server.cert}\n"
                   f"  key_file: {pki.server.key}\n")
    ok = cli("check-config", "--dsn", seeded_db.url, "--web.config.file", str(web),
             "--connect")
    assert ok.returncode == 0, ok.stderr
    assert "ok: web config" in ok.stdout and "TLS on" in ok.stdout
    assert re.search(r"ok: one poll: \d+ batches watched", ok.stdout)
    assert ok.stdout.strip().endswith("configuration OK")
    web.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    bad = cli("check-config", "--dsn", seeded_db.url, "--web.config.file", str(web))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    closed = f"postgresql://u:pw-9@127.0.0.1:{free_port()}/db"
    assert cli("check-config", "--dsn", closed).returncode == 0  # no --connect: not tried
    down = cli("check-config", "--dsn", closed, "--connect")
    assert down.returncode == 2 and "cannot connect" in down.stderr and "pw-9" not in (
        down.stderr + down.stdout)


def test_remediate_finds_batches_like_inspect(remediation_db: object) -> None:
    db = remediation_db
    url = db.url  # type: ignore[attr-defined]
    missing = cli("remediate", "--dsn", url, "--batch", "424242", "--action", "refinalize")
    assert missing.returncode == 1
    assert "no CJ batch with cj_batch_id or bos_batch_id '424242'" in missing.stderr
    wedged = db.batch("wedged")  # type: ignore[attr-defined]
    engine = create_engine(url)
    with engine.connect() as conn:
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :i"),
                           {"i": wedged}).scalar_one()
    engine.dispose()
    by_bos = cli("remediate", "--dsn", url, "--batch", bos, "--action", "refinalize")
    assert by_bos.returncode == 0, by_bos.stderr
    assert f"refinalize batch {wedged}: dry_run" in by_bos.stdout
    for repr_ in ("{", "True", "None", "[]"):
        assert repr_ not in by_bos.stdout, by_bos.stdout
    twice = cli("remediate", "--dsn", url, "--batch", "7b0c1d2e-0000-4000-8000-0000000e0e0e",
                "--action", "refinalize")
    assert twice.returncode == 2 and "has 2 CJ runs" in twice.stderr
    no_write = cli("remediate", "--dsn", url, "--pause", "x")
    assert no_write.returncode == 2
    assert "--write-dsn, CJ_HEALTH_REMEDIATION_WRITE_DSN" in no_write.stderr


def test_the_healthcheck_stays_light() -> None:
    """A probe runs every few seconds, often with a 1 s timeout: it must not import SQLAlchemy
    (most of a second) or the finalizer's numpy."""
    import subprocess
    import sys

    code = ("import sys; from exporter import cli; from exporter.commands import healthcheck; "
            "cli.build_parser(); print(sorted(m for m in ('sqlalchemy', 'numpy', 'psycopg') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
