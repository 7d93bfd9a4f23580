"""A throwaway PostgreSQL from the `pgserver` wheel, for the demo and the tests.

pgserver bundles PostgreSQL 16 binaries and listens on a Unix socket only (nothing is exposed on
the network). Run as root it starts the server as a system user `pgserver` and makes the data
folder's parents world-readable, so the data folder always lives in a fresh temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL


class EmbeddedPostgres:
    def __init__(self, data_dir: Path | None = None) -> None:
        # platformdirs warns about XDG_RUNTIME_DIR when it is unset or shared; it is harmless.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # optional dependency: the `demo` extra

        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="cjh-pg-")) / "data"
        self._server: Any = pgserver.get_server(  # type: ignore[attr-defined]
            self.data_dir, cleanup_mode="stop")
        info = self._server.get_postmaster_info()
        self.socket_dir = Path(info.socket_dir) if info.socket_dir else self.data_dir

    def url(self, database: str = "postgres") -> URL:
        return URL.create("postgresql+psycopg", username="postgres", database=database,
                          query={"host": str(self.socket_dir)})

    def stop_server(self) -> None:
        """Stop PostgreSQL but keep the data (tests: the database goes down)."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir,
               user=self._server.system_user)

    def start_server(self, tcp_port: int | None = None) -> None:
        """Start it again on the same socket (tests: the database comes back); with tcp_port
        also on 127.0.0.1:tcp_port (tests: a database appears where nothing listened)."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        listen = f"-h 127.0.0.1 -p {tcp_port}" if tcp_port else '-h ""'
        pg_ctl(["-w", "-o", listen, "-o", f"-k {self.socket_dir}", "-l",
                str(self.data_dir / "log"), "start"],
               pgdata=self.data_dir, user=self._server.system_user, timeout=20)

    def close(self) -> None:
        self._server.cleanup()
        if self._own_dir:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def runtime_dir_env() -> None:
    """Give platformdirs a private runtime dir so pgserver's lock file has a home."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(tempfile.gettempdir()) / f"cjh-runtime-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)
