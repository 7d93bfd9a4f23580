"""The one place tests start processes: the exporter's CLI run to its end (`run_cli`), a real
`serve` (`ExporterProcess`), the `demo` (`DemoProcess`), and Prometheus/Alertmanager
(`Daemon`); plus free ports and HTTP. (Also the PromQL selector walker and the loader of the
repository's alerts/dashboards scripts, shared by the alert and dashboard tests.)"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import promql_parser

from tests.support.exposition import sample_value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5, *,
             context: ssl.SSLContext | None = None,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an exporter subprocess: ours without CJ_HEALTH_* (the exporter refuses
    unknown ones, and a setting exported in the caller's shell must not change a test), plus
    `extra`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CJ_HEALTH_")}
    return {**inherited, **(extra or {})}


def exporter_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`cj-health-exporter ARGS` run to its end, stdout and stderr captured as text."""
    return subprocess.run(exporter_argv(*args), capture_output=True, text=True,
                          timeout=timeout, env=child_env(env))


class ExporterProcess:
    """`cj-health-exporter serve` on 127.0.0.1:PORT; waits for the first poll; always stopped.

    `dsn=None` passes no --dsn (the test gives it another way, e.g. CJ_HEALTH_DSN_FILE). For a
    server behind --web.config.file, `scheme="https"`, the client's `ssl_context` and `headers`
    (credentials) are used by every request the helper makes.
    """

    def __init__(self, dsn: str | None, port: int | None = None,
                 extra_args: list[str] | None = None, poll_interval: float = 1.0,
                 env: dict[str, str] | None = None, *, scheme: str = "http",
                 ssl_context: ssl.SSLContext | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ssl_context = ssl_context
        self.headers = dict(headers or {})
        self.args = exporter_argv(
            "serve", *(["--dsn", dsn] if dsn is not None else []),
            "--web.listen-address", f"127.0.0.1:{self.port}",
            "--poll-interval", str(poll_interval), *(extra_args or []))
        self.env = child_env(env)
        fd, log_path = tempfile.mkstemp(prefix="cjh-serve-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_output: str | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        try:
            # Ready once the first poll succeeded (the family is absent until then).
            self.wait_for(lambda body: sample_value(
                body, "cj_health_last_success_timestamp_seconds") is not None, 30)
        except BaseException:
            self.__exit__(None, None, None)  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if not self._log.closed:
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

    def get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """One request to the server, with the helper's TLS context and credentials."""
        return http_get(f"{self.url}{path}", {**self.headers, **(headers or {})}, timeout,
                        context=self.ssl_context, method=method)

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
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
                status, _, body = self.get("/metrics", timeout=2)
                if status == 200 and predicate(body):
                    return body
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for the exporter; last body:\n"
                             f"{body.decode()[-2000:]}\nlog:\n{self.output()[-3000:]}")


class DemoProcess:
    """`cj-health-exporter demo` on 127.0.0.1:PORT: started, its summary read up to the Ctrl-C
    line; on exit interrupted with SIGINT (as a person would) and waited for. `returncode` and
    `stderr` are set after the block."""

    def __init__(self, *extra_args: str, poll_interval: float = 1.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = exporter_argv("demo", "--web.listen-address", f"127.0.0.1:{self.port}",
                                  "--poll-interval", str(poll_interval), *extra_args)
        self.summary = ""
        self.returncode: int | None = None
        self.stderr = ""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=child_env())
        try:
            assert self.proc.stdout is not None
            lines = []
            for line in self.proc.stdout:
                lines.append(line)
                if line.startswith("Ctrl-C"):
                    break
            self.summary = "".join(lines)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        if "Ctrl-C" not in self.summary:
            self.__exit__(None, None, None)
            raise AssertionError(f"the demo did not start:\n{self.summary}\n{self.stderr}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.seek(0)
        self.stderr = self._stderr.read().decode(errors="replace")
        self._stderr.close()

    def metrics(self) -> bytes:
        status, _, body = http_get(f"{self.url}/metrics")
        assert status == 200, status
        return body


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

    def __enter__(self) -> Self:
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
