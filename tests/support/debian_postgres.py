"""A second PostgreSQL major version for the tests: Debian's PostgreSQL 15 binaries.

pgserver gives PostgreSQL 16; upstream runs 15, whose stack limits for JSON differ (nesting
13,100 vs 16,375 levels). `initdb`/`pg_ctl` refuse to run as root, so as root they run as the
`postgres` system user (`runuser`), on a Unix socket in a fresh temporary folder and no TCP
port. .ci/test.sh installs the `postgresql-15` package when the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter import sqlfiles

BIN = Path("/usr/lib/postgresql/15/bin")
TEMPLATE = "cj_template"


class DebianPostgres:
    def __init__(self, bin_dir: Path = BIN) -> None:
        if not (bin_dir / "initdb").is_file():
            raise FileNotFoundError(
                f"{bin_dir}/initdb is missing: install the postgresql-15 package"
                " (.ci/test.sh does)")
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="cjh-pg15-"))
        self.data = self.folder / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8")
        options = (f"-c listen_addresses='' -k {self.folder} -c fsync=off"
                   " -c max_connections=30")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "log"), "-w", "-t", "30", "start")
        self._prepare_template()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def url(self, database: str = "postgres") -> URL:
        return URL.create("postgresql+psycopg", username="postgres", database=database,
                          query={"host": str(self.folder)})

    def _prepare_template(self) -> None:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
        admin.dispose()
        template = create_engine(self.url(TEMPLATE))
        with template.begin() as conn:
            sqlfiles.load_reference_schema(conn)
            sqlfiles.install_views(conn)
        sqlfiles.install_indexes(template)
        template.dispose()

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
