"""Shared test helpers: free ports and a real `cj-health-exporter serve` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class ExporterProcess:
    """`cj-health-exporter serve` on 127.0.0.1:PORT; waits for the first poll; always stopped."""

    def __init__(self, dsn: str, port: int | None = None, extra_args: list[str] | None = None,
                 poll_interval: float = 1.0, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "exporter", "serve", "--dsn", dsn,
                     "--web.listen-address", f"127.0.0.1:{self.port}",
                     "--poll-interval", str(poll_interval), *(extra_args or [])]
        self.env = {**os.environ, **(env or {})}
        fd, log_path = tempfile.mkstemp(prefix="cjh-serve-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_output: str | None = None

    def __enter__(self) -> ExporterProcess:
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        self.wait_for(lambda body: b"cj_health_last_success_timestamp_seconds" in body, 30)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self._log.close()
        self._final_output = self.output()
        self.log_path.unlink(missing_ok=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr (kept after the process stopped)."""
        if self._final_output is not None:
            return self._final_output
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        status, _, body = http_get(f"{self.url}/metrics")
        assert status == 200, status
        return body.decode()

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        body = b""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, body = http_get(f"{self.url}/metrics", timeout=2)
                if status == 200 and predicate(body):
                    return body
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for the exporter; last body:\n"
                             f"{body.decode()[-2000:]}\nlog:\n{self.output()[-3000:]}")


