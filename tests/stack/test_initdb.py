"""deploy/postgres/initdb/10-cj-health.sh as the postgres image runs it: sourced by bash when it
is not executable (a Kubernetes ConfigMap mount), executed when it is; plus `bash -n` and
shellcheck. Against a real PostgreSQL, with pgserver's psql."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter.sqlfiles import sql_dir
from tests.support.database import Server, drop_database, new_database
from tests.support.hardening import drop_roles, psql_binary
from tests.support.paths import ROOT

SCRIPT = ROOT / "deploy" / "postgres" / "initdb" / "10-cj-health.sh"
# What docker-entrypoint.sh does with a file it sources (docker_process_init_files).
ENTRYPOINT = 'set -Eeo pipefail; . "$1"; [[ $- != *u* ]] || exit 99; echo "entrypoint goes on"'


def test_the_script_parses_under_bash_and_passes_shellcheck() -> None:
    parsed = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is needed: .ci/test.sh installs the Debian package"
    linted = subprocess.run([shellcheck, "--shell=bash", str(SCRIPT)], capture_output=True,
                            text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def libpq_env(url: URL, database: str) -> dict[str, str]:
    env = {"POSTGRES_USER": url.username or "postgres", "POSTGRES_DB": database,
           "CJ_SQL_DIR": str(sql_dir()),
           "PATH": f"{Path(psql_binary()).parent}:/usr/bin:/bin"}
    host = url.query.get("host") or url.host
    env["PGHOST"] = str(host)
    if url.port:
        env["PGPORT"] = str(url.port)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


@pytest.fixture
def empty_db(pg_server: Server) -> Iterator[str]:
    name = new_database(pg_server, template="template0")
    try:
        yield name
    finally:
        drop_database(pg_server, name)
        drop_roles(pg_server.url(), "cjh_initdb_sourced", "cjh_initdb_executed")


def reader_sees_the_views(server: Server, database: str, reader: str) -> int:
    url = server.url(database).set(username=reader, password="reader-pw-1")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
        count = int(conn.execute(text("SELECT count(*) FROM cj_batch_health")).scalar_one())
    engine.dispose()
    return count


@pytest.mark.parametrize("mode", ["sourced", "executed"])
def test_the_script_initialises_a_database_sourced_or_executed(
        pg_server: Server, empty_db: str, tmp_path: Path, mode: str) -> None:
    copy = tmp_path / SCRIPT.name
    shutil.copyfile(SCRIPT, copy)
    reader = f"cjh_initdb_{mode}"
    env = {**libpq_env(pg_server.url(), empty_db), "CJ_HEALTH_READER_USER": reader,
           "CJ_HEALTH_READER_PASSWORD": "reader-pw-1"}
    if mode == "sourced":
        copy.chmod(0o644)  # as a ConfigMap mounts it: not executable
        assert not os.access(copy, os.X_OK)
        argv = ["bash", "-c", ENTRYPOINT, "entrypoint", str(copy)]
    else:
        copy.chmod(0o755)
        argv = [str(copy)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cj-health: schema, views and role {reader} ready" in result.stdout
    if mode == "sourced":
        assert result.stdout.strip().endswith("entrypoint goes on")  # set -u did not leak
    assert reader_sees_the_views(pg_server, empty_db, reader) == 0  # views there, no batches


def test_a_missing_password_stops_the_entrypoint_with_one_clear_line(
        pg_server: Server, empty_db: str, tmp_path: Path) -> None:
    copy = tmp_path / SCRIPT.name
    shutil.copyfile(SCRIPT, copy)
    copy.chmod(0o644)
    env = libpq_env(pg_server.url(), empty_db)
    result = subprocess.run(["bash", "-c", ENTRYPOINT, "entrypoint", str(copy)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0 and "entrypoint goes on" not in result.stdout
    assert "set CJ_HEALTH_READER_PASSWORD" in result.stderr
