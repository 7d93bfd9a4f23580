"""Shared test helpers: free ports and a real `cj-health-exporter serve` subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import promql_parser

from tests.support.exposition import sample_value


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
        # Ready once the first poll succeeded (the family is absent until then).
        self.wait_for(lambda body: sample_value(
            body, "cj_health_last_success_timestamp_seconds") is not None, 30)
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


class Daemon:
    """A server binary on 127.0.0.1:PORT with a temporary folder; ready when /-/ready says 200."""

    def __init__(self, binary: str, folder: Path, args: Callable[[int, Path], list[str]]) -> None:
        path = shutil.which(binary)
        assert path, f"`{binary}` is required: .ci/test.sh installs its Debian package"
        self.name = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.argv = [path, *args(self.port, folder)]
        self.log_path = folder / f"{binary}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait(lambda: http_get(f"{self.url}/-/ready", timeout=1)[0] == 200, 20, "ready")
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: timed out waiting for {what}\n{self.log()}")

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, _, body = http_get(f"{self.url}/api/v1/{path}{query}", timeout=5)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)["data"]


class Selector:
    def __init__(self, name: str, matchers: list[tuple[str, str, str]]) -> None:
        self.name, self.matchers = name, matchers

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}{op}{v!r}" for n, op, v in self.matchers)
        return f"{self.name}{{{inner}}}"


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression, with its label matchers."""
    found: list[Selector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op), m.value) for m in node.matchers.matchers]
            found.append(Selector(str(node.name), matchers))
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                visit(child)
        for arg in getattr(node, "args", None) or []:
            visit(arg)

    visit(promql_parser.parse(expr))
    return found


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
