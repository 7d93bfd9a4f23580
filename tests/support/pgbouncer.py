"""A real PgBouncer (the Debian `pgbouncer` package) in front of the test PostgreSQL.

Started by the test on 127.0.0.1 and a free port with an ini file of its own, in the pool mode
the test asks for; stopped by its PID. PgBouncer refuses to run as root, so as root it is
started with `-u nobody` (it drops privileges after reading its files). `.ci/test.sh` installs
the package; a test that needs it fails, never skips, when it is missing.

Neighbours are the "other clients" of a shared pool: applications on psycopg's defaults
(automatic prepared statements) that leave their `_pg3_N` statements on every server connection
they use, as the six psycopg clients of the measurement before the fix did (docs/security.md,
"Behind PgBouncer").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from tests.support.process import free_port

# What psycopg and SQLAlchemy may send at start-up that PgBouncer does not track itself.
IGNORED_STARTUP = "extra_float_digits,options"


class PgBouncer:
    """`pgbouncer INI` in the foreground, one pool per (database, user) pointing at `backend`."""

    def __init__(self, backend: URL, pool_mode: str, pool_size: int = 4,
                 users: dict[str, str] | None = None, **extra: str | int) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        assert binary, "`pgbouncer` is required: .ci/test.sh installs the Debian package"
        self.binary = binary
        self.pool_mode = pool_mode
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cjh-pgb-"))
        self.folder.chmod(0o755)
        self.log_path = self.folder / "pgbouncer.log"
        self.admin_user = "pgb_admin"
        self.ini = self.folder / "pgbouncer.ini"
        self.ini.write_text(self._ini(backend, pool_size, extra))
        # auth_type=trust still needs a password to log in to PostgreSQL when the server asks
        # for one: PgBouncer takes it from here (plain text, a test file).
        # With auth_type=trust PgBouncer still only admits the users listed here.
        known = {self.admin_user: "", backend.username or "postgres": backend.password or "",
                 **(users or {})}
        (self.folder / "users.txt").write_text("".join(
            f'"{user}" "{password}"\n' for user, password in known.items()))
        for path in (self.ini, self.folder / "users.txt"):
            path.chmod(0o644)
        self.run_as = _unprivileged_user(backend)
        self.proc: subprocess.Popen[bytes] | None = None

    def _ini(self, backend: URL, pool_size: int, extra: dict[str, str | int]) -> str:
        host = backend.query.get("host") or backend.host or "127.0.0.1"
        port = backend.port or 5432
        settings: dict[str, str | int] = {
            "listen_addr": "127.0.0.1", "listen_port": self.port, "unix_socket_dir": "",
            "auth_type": "trust", "auth_file": str(self.folder / "users.txt"),
            "pool_mode": self.pool_mode, "default_pool_size": pool_size,
            "max_client_conn": 200, "ignore_startup_parameters": IGNORED_STARTUP,
            "admin_users": self.admin_user, "logfile": str(self.log_path),
            "log_connections": 0, "log_disconnections": 0, **extra,
        }
        lines = ["[databases]", f"* = host={host} port={port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> PgBouncer:
        argv = [self.binary, str(self.ini)]
        if self.run_as is not None:  # "FATAL PgBouncer should not run as root"
            argv[1:1] = ["-u", self.run_as]
            shutil.chown(self.folder, user=self.run_as)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_ready(10.0)
        except BaseException:
            self.__exit__(None, None, None)  # not called when __enter__ raises
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited {self.proc.returncode}: {self.log()}")
            try:
                with psycopg.connect(self.admin_conninfo(), autocommit=True,
                                     prepare_threshold=None, connect_timeout=2) as conn:
                    conn.execute("SHOW VERSION")
                    return
            except psycopg.Error:
                time.sleep(0.05)
        raise AssertionError(f"pgbouncer did not start: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            text += self.proc.stderr.read().decode(errors="replace")
        return text[-3000:]

    def url(self, backend: URL) -> URL:
        """`backend` (same database, user and password) reached through this PgBouncer."""
        return URL.create("postgresql+psycopg", username=backend.username,
                          password=backend.password, host="127.0.0.1", port=self.port,
                          database=backend.database)

    def admin_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.admin_user}"

    def show(self, what: str) -> list[dict[str, Any]]:
        """A `SHOW` of the admin console (POOLS, SERVERS, CLIENTS, ...)."""
        with psycopg.connect(self.admin_conninfo(), autocommit=True,
                             prepare_threshold=None) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _unprivileged_user(backend: URL) -> str | None:
    """Who PgBouncer runs as when we are root: the owner of PostgreSQL's socket folder (pgserver
    keeps it in its 0700 data folder), or `nobody` for a TCP backend. None: not root."""
    if os.geteuid() != 0:
        return None
    socket_dir = backend.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        return Path(socket_dir).owner()
    return "nobody"


def conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def poison_pool(url: URL, server_connections: int, statements: int = 30) -> int:
    """Leave `_pg3_0.._pg3_{statements-1}` (10 parameters each) on every server connection
    of the pool `url` reaches, as a psycopg application on its defaults would.

    `server_connections` client connections each open a transaction at the same time, so each
    holds a server connection of its own (the pool's whole size), and PREPARE there. Returns how
    many distinct server backends were poisoned. A client of ours that auto-prepares its 1st
    statement on any of them then fails with `prepared statement "_pg3_0" already exists`.
    """
    params = ", ".join(["int"] * 10)
    body = " + ".join(f"${i}" for i in range(1, 11))
    conns = [psycopg.connect(conninfo(url), autocommit=True, prepare_threshold=None)
             for _ in range(server_connections)]
    try:
        pids = set()
        for conn in conns:
            conn.execute("BEGIN")
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            for n in range(statements):
                conn.execute(f"PREPARE _pg3_{n} ({params}) AS SELECT {body}")
        for conn in conns:
            conn.execute("COMMIT")
        return len(pids)
    finally:
        for conn in conns:
            conn.close()


class Neighbours:
    """`count` threads of another application sharing the pool: short transactions on psycopg's
    defaults (so they auto-prepare, and collide with each other), for at most `seconds`."""

    def __init__(self, url: URL, count: int, seconds: float = 120.0) -> None:
        self.url = url
        self.count = count
        self.deadline = time.monotonic() + seconds
        self.stop_event = threading.Event()
        self.transactions = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"neighbour-{i}")
                         for i in range(count)]

    def __enter__(self) -> Neighbours:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(conninfo(self.url), connect_timeout=5)
                with conn.transaction():
                    conn.execute("SELECT %s::int + 1, pg_sleep(0.02)", (1,))
                    conn.execute("SELECT count(*) FROM cj_batch_states WHERE batch_id > %s",
                                 (0,))
                with self._lock:
                    self.transactions += 1
            except psycopg.Error:
                with self._lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

