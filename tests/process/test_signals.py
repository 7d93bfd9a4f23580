"""Issue 12 item 5: signals to a real `serve` process.

SIGTERM must end the process cleanly (exit 0) within 5 s in every state: idle, while a poll
query is stuck, during a wrong-password flood (bcrypt's native code used to be unwound by the
interpreter's exit: SIGABRT, "FATAL: exception not rethrown", 5 of 5 runs), and while the
finalizer is inside its transaction. SIGHUP used to kill the process without a word (exit 129);
now it re-reads the web config (even when the files look unchanged) and the DSN file
(docs/security.md, "Signals").
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from sqlalchemy import create_engine, text

from tests.support.attack import Flood, LimitedExporter, basic, request
from tests.support.database import SeededDb, Server, drop_database, new_database, url_string
from tests.support.exposition import sample_value
from tests.support.hardening import Pki, exporter_backends, make_pki, wait_until
from tests.support.remediation import RemediationDb

PASSWORD = "scrape-password-1"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
NEW_PASSWORD = "scrape-password-2"  # same length: the rewritten file keeps its size
NEW_HASH = bcrypt.hashpw(NEW_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
FLOOD_SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 6))
EXIT_BOUND = 5.0


def sigterm(exp: LimitedExporter) -> tuple[int | None, float]:
    assert exp.proc is not None
    started = time.monotonic()

    code = exp.stop(signal.SIGTERM, timeout=15)
    return code, time.monotonic() - started


def assert_clean(exp: LimitedExporter, code: int | None, seconds: float, what: str) -> None:
    output = exp.output()
    print(f"\nSIGTERM {what}: exit {code} after {seconds:.2f} s")
    assert code == 0, f"{what}: exit {code}\n{output[-2000:]}"
    assert seconds < EXIT_BOUND, f"{what}: {seconds:.1f} s"
    assert "FATAL" not in output and "Traceback" not in output, output[-2000:]


def test_sigterm_when_idle(seeded_db: SeededDb) -> None:
    with LimitedExporter(seeded_db.url, poll_interval=30) as exp:
        code, seconds = sigterm(exp)
    assert_clean(exp, code, seconds, "idle")
    assert "still running" not in exp.output()  # nothing needed the forced exit


def test_sigterm_during_a_stuck_poll(seeded_db: SeededDb) -> None:
    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:  # every read of the outbox view now sleeps 60 s in Postgres
        conn.execute(text("ALTER VIEW cj_outbox_health RENAME TO cj_outbox_health_fast"))
        conn.execute(text("CREATE VIEW cj_outbox_health AS SELECT f.* FROM"
                          " cj_outbox_health_fast AS f CROSS JOIN pg_sleep(60)"))
    engine.dispose()
    exp = LimitedExporter(seeded_db.url, poll_interval=0.5,
                          extra_args=["--statement-timeout", "120"])
    # Not `with exp`: the first poll never finishes, so wait for the server and the query.
    import subprocess

    exp.proc = subprocess.Popen(exp.args, stdout=exp._log, stderr=subprocess.STDOUT,
                                env=exp.env)
    try:
        wait_until(lambda: any("pg_sleep" in q or "cj_outbox_health" in q
                               for _, state, q in exporter_backends(seeded_db.url)
                               if state == "active"), 30, "a poll stuck in Postgres")
        code, seconds = sigterm(exp)
    finally:
        exp.__exit__(None, None, None)
    assert_clean(exp, code, seconds, "during a stuck poll")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write_web_config(folder: Path, pki: Pki | None, hashed: str) -> Path:
    body = ""
    if pki is not None:
        shutil.copy(pki.server.cert, folder / "server.crt")
        shutil.copy(pki.server.key, folder / "server.key")
        body = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    path = folder / "web.yml"
    path.write_text(body + f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


@pytest.mark.parametrize("run", range(5))
def test_sigterm_during_a_bcrypt_flood(seeded_db: SeededDb, pki: Pki, tmp_path: Path,
                                       run: int) -> None:
    use_tls = run % 2 == 0  # the abort happened with and without TLS
    config = write_web_config(tmp_path, pki if use_tls else None, HASH)
    with LimitedExporter(seeded_db.url, poll_interval=1,
                         tls=pki.client_context() if use_tls else None,
                         authorization=basic("prometheus", PASSWORD),
                         extra_args=["--web.config.file", str(config)]) as exp:
        flood = Flood(exp.port, 200, 3, FLOOD_SOURCES, tls=exp.tls, workers=60,
                      timeout=3).start()
        time.sleep(0.6 + 0.1 * run)  # bcrypt is running: checks are queued and in progress
        code, seconds = sigterm(exp)
        flood.stop()
    assert_clean(exp, code, seconds, f"during a bcrypt flood ({'TLS' if use_tls else 'HTTP'},"
                                     f" run {run + 1}, answers so far {flood.statuses})")


def test_sigterm_inside_the_finalizers_transaction(remediation_db: RemediationDb) -> None:
    db = remediation_db
    wedged = db.batch("wedged")
    with db.engine.begin() as conn:  # the audit INSERT, the last statement before COMMIT
        conn.execute(text("CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS"
                          " $$ BEGIN PERFORM pg_sleep(8); RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER slow_audit BEFORE INSERT ON cj_health_remediations"
                          " FOR EACH ROW EXECUTE FUNCTION slow_audit()"))
        events_before = conn.execute(text(
            "SELECT count(*) FROM event_outbox WHERE aggregate_id = :id"),
            {"id": str(wedged)}).scalar_one()
    env = {"CJ_HEALTH_REMEDIATION_ENABLED": "true",
           "CJ_HEALTH_REMEDIATION_ACTIONS": "refinalize",
           "CJ_HEALTH_REMEDIATION_DRY_RUN": "false",
           "CJ_HEALTH_REMEDIATION_INTERVAL_SECONDS": "1",
           "CJ_HEALTH_REMEDIATION_MIN_WEDGED_SECONDS": "60",
           "CJ_HEALTH_REMEDIATION_WRITE_DSN": db.url}
    with LimitedExporter(db.url, poll_interval=1, env=env) as exp:
        wait_until(lambda: any("cj_health_remediations" in q and state == "active"
                               for _, state, q in _finalizer_backends(db.url)), 30,
                   "the finalizer inside its transaction (the audit INSERT sleeping)")
        code, seconds = sigterm(exp)
    assert_clean(exp, code, seconds, "inside the finalizer's transaction")
    # Whatever the finalizer had written is one transaction: rolled back, none of it left.
    wait_until(lambda: not _finalizer_backends(db.url), 15, "the finalizer's backends to end")
    with db.engine.connect() as conn:
        events_after = conn.execute(text(
            "SELECT count(*) FROM event_outbox WHERE aggregate_id = :id"),
            {"id": str(wedged)}).scalar_one()
        audits = conn.execute(text("SELECT count(*) FROM cj_health_remediations")).scalar_one()
    assert (events_after, audits) == (events_before, 0)


def _finalizer_backends(url: str) -> list[tuple[int, str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT pid, state, query FROM pg_stat_activity"
                " WHERE application_name = 'cj-health-exporter-finalizer'")).all()
    finally:
        engine.dispose()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


# -- SIGHUP -------------------------------------------------------------------------------

@pytest.fixture
def second_db(pg_server: Server) -> Iterator[str]:
    """Another database with the views and no batches: where a reloaded DSN points."""
    name = new_database(pg_server)
    yield url_string(pg_server.url(name))
    drop_database(pg_server, name)


def test_sighup_rereads_the_web_config_and_the_dsn_file(seeded_db: SeededDb, second_db: str,
                                                        tmp_path: Path) -> None:
    config = write_web_config(tmp_path, None, HASH)
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(seeded_db.url + "\n")
    exp = LimitedExporter("unused", poll_interval=0.3, authorization=basic("prometheus",
                                                                          PASSWORD),
                          extra_args=["--web.config.file", str(config), "--dsn-file",
                                      str(dsn_file)])
    at = exp.args.index("--dsn")
    del exp.args[at:at + 2]
    with exp:
        assert exp.proc is not None
        batches = sample_value(exp.scrape()[1], "cj_health_exported_batches")
        assert batches and batches > 0
        # 1. The web config changes in a way its fingerprint (inode, mtime, size) cannot see:
        #    only SIGHUP makes the exporter read it.
        stat = config.stat()
        with config.open("r+") as f:
            f.write(config.read_text().replace(HASH, NEW_HASH))
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert config.stat().st_size == stat.st_size
        time.sleep(1.5)  # past the once-a-second check: still the old password
        assert exp.scrape()[0] == 200
        os.kill(exp.proc.pid, signal.SIGHUP)
        wait_until(lambda: exp.scrape()[0] == 401, 5, "the old password refused after SIGHUP")
        exp.authorization = basic("prometheus", NEW_PASSWORD)
        assert exp.scrape()[0] == 200
        # 2. The DSN file now names another database: polls go there after SIGHUP.
        dsn_file.write_text(second_db + "\n")
        os.kill(exp.proc.pid, signal.SIGHUP)
        wait_until(lambda: sample_value(exp.scrape()[1], "cj_health_exported_batches") == 0, 10,
                   "polls of the database the new DSN names")
        second = second_db.rsplit("/", 1)[1].split("?")[0]
        assert exporter_backends(second_db, second)
        # 3. A broken DSN file is logged and the DSN in use is kept.
        dsn_file.write_text("mysql://nope\n")
        os.kill(exp.proc.pid, signal.SIGHUP)
        wait_until(lambda: "SIGHUP: keeping the DSN in use" in exp.output(), 5, "the error")
        time.sleep(1)
        body = exp.scrape()[1]
        assert sample_value(body, "cj_health_up") == 1 and exp.proc.poll() is None
        code, seconds = sigterm(exp)
    output = exp.output()
    print(f"\nSIGHUP x3: web config reloaded, DSN reloaded, broken DSN file kept the old one; "
          f"then SIGTERM: exit {code} after {seconds:.2f} s")
    assert code == 0
    assert output.count("SIGHUP: re-reading") == 3
    assert "web config reloaded" in output and "read DSN reloaded" in output
    assert "Traceback" not in output


def test_sighup_without_a_web_config_or_dsn_file_is_harmless(seeded_db: SeededDb) -> None:
    with LimitedExporter(seeded_db.url, poll_interval=0.5) as exp:
        assert exp.proc is not None
        for _ in range(3):
            os.kill(exp.proc.pid, signal.SIGHUP)
            time.sleep(0.2)
        assert exp.scrape()[0] == 200 and exp.proc.poll() is None
        assert request(exp.port, "/healthz")[0] == 200
        code, _ = sigterm(exp)
    assert code == 0
    assert "the DSN was given directly" in exp.output()
