"""Hostile HTTP clients and what they do to a real `serve` process; holds no tests itself.

Everything runs on 127.0.0.1 (attackers may bind another loopback source address, 127.0.0.2
and up, to look like other hosts), with bounded connection counts, rates and durations.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hardening import basic, percentiles
from tests.support.process import ExporterProcess

__all__ = ["basic"]  # re-exported: the attack tests take it from here with the rest


def raise_own_nofile(at_least: int) -> None:
    """The attacking test process needs more descriptors than its victim."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(at_least, hard), hard))


class LimitedExporter(ExporterProcess):
    """ExporterProcess with RLIMIT_NOFILE set in the child (systemd's default soft limit is
    1024), optionally speaking HTTPS with credentials."""

    def __init__(self, dsn: str, nofile: int = 1024, tls: ssl.SSLContext | None = None,
                 authorization: str | None = None, telemetry_path: str = "/metrics",
                 **kwargs: object) -> None:
        super().__init__(dsn, **kwargs)  # type: ignore[arg-type]
        if telemetry_path != "/metrics":
            self.args += ["--web.telemetry-path", telemetry_path]
        self.telemetry_path = telemetry_path
        self.nofile = nofile
        self.tls = tls
        self.authorization = authorization
        if tls is not None:
            self.url = f"https://127.0.0.1:{self.port}"

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def __enter__(self) -> LimitedExporter:
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, preexec_fn=self._limit)
        wait_until_serving(self, 30)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def scrape(self, path: str | None = None, timeout: float = 5.0,
            source: str | None = None) -> tuple[int, bytes]:
        return request(self.port, path or self.telemetry_path, tls=self.tls,
                       authorization=self.authorization, timeout=timeout, source=source)


def wait_until_serving(exp: LimitedExporter, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert exp.proc is not None
        if exp.proc.poll() is not None:
            raise AssertionError(f"exporter exited {exp.proc.returncode}:\n{exp.output()}")
        try:
            status, body = exp.scrape(timeout=2)
            if status == 200 and b"cj_health_last_success_timestamp_seconds" in body:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the exporter never served a poll:\n{exp.output()[-3000:]}")


def request(port: int, path: str = "/metrics", tls: ssl.SSLContext | None = None,
            authorization: str | None = None, timeout: float = 5.0,
            source: str | None = None) -> tuple[int, bytes]:
    """One GET on a new connection (from `source`, a loopback address, if given)."""
    address = (source, 0) if source else None
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls,
                                           source_address=address)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                          source_address=address)
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization
                     else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- what the victim holds ------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def sockets_held(pid: int) -> int:
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            held += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return held


@dataclass
class Peak:
    rss_mb: float = 0.0
    threads: int = 0
    fds: int = 0
    sockets: int = 0


class Sampler(threading.Thread):
    """Samples the victim's RSS, threads, descriptors and sockets; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = Peak()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            try:
                self.peak.rss_mb = max(self.peak.rss_mb, rss_mb(self.pid))
                self.peak.threads = max(self.peak.threads,
                                        len(os.listdir(f"/proc/{self.pid}/task")))
                self.peak.fds = max(self.peak.fds, len(os.listdir(f"/proc/{self.pid}/fd")))
                self.peak.sockets = max(self.peak.sockets, sockets_held(self.pid))
            except OSError:
                return  # the process ended

    def stop(self) -> Peak:
        self._halt.set()
        self.join(5)
        return self.peak


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.latencies:
            return f"0 ok, {len(self.failures)} failed"
        p = percentiles(self.latencies) if len(self.latencies) > 1 else \
            {"p50": self.latencies[0], "p99": self.latencies[0], "max": self.latencies[0]}
        return (f"{len(self.latencies)} ok, {len(self.failures)} failed, p50 "
                f"{p['p50'] * 1000:.1f} ms, p99 {p['p99'] * 1000:.1f} ms, max "
                f"{p['max'] * 1000:.1f} ms")

    def figures(self) -> dict[str, float]:
        return percentiles(self.latencies)


class Scraper(threading.Thread):
    """A legitimate scraper: one GET every `every` seconds, a new connection each time (the
    hardest case: it must get in past the attackers), `timeout` like Prometheus's."""

    def __init__(self, get: Callable[[], tuple[int, bytes]], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.get, self.every = get, every
        self.scrapes = Scrapes()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                status, body = self.get()
                if status == 200 and b"cj_health_up 1" in body:
                    self.scrapes.latencies.append(time.monotonic() - started)
                else:
                    self.scrapes.failures.append(f"status {status}")
            except OSError as exc:
                self.scrapes.failures.append(f"{type(exc).__name__}: {exc}")
            self._halt.wait(max(0.0, self.every - (time.monotonic() - started)))

    def stop(self) -> Scrapes:
        self._halt.set()
        self.join(30)
        return self.scrapes


# -- slow clients ---------------------------------------------------------------------------

class Slowloris(threading.Thread):
    """`count` connections kept open, each reopened when the server closes it (at most
    `reopen_per_second`, and never after `stop()`), from `sources` in turn.

    mode "silent": connect and send nothing. "trickle": a request line, then one header byte
    every `trickle_every` seconds. "tls": the first 3 bytes of a TLS ClientHello, then nothing.
    """

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    CLIENT_HELLO = b"\x16\x03\x01"

    def __init__(self, port: int, count: int, mode: str = "silent",
                 trickle_every: float = 2.0, reopen_per_second: float = 1000.0,
                 sources: tuple[str, ...] = ("127.0.0.1",)) -> None:
        super().__init__(daemon=True)
        self.sources = sources
        self.port, self.count, self.mode = port, count, mode
        self.trickle_every = trickle_every
        self.reopen_per_second = reopen_per_second
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.opened = 0
        self.closed_by_server = 0
        self.ready = threading.Event()
        self._halt = threading.Event()
        self._next_byte: dict[socket.socket, float] = {}

    def _connect(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((self.sources[self.opened % len(self.sources)], 0))
            sock.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return
        self.selector.register(sock, selectors.EVENT_WRITE, "connecting")
        self.open += 1
        self.opened += 1

    def _connected(self, sock: socket.socket) -> None:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._drop(sock)
            return
        first = {"silent": b"", "trickle": self.REQUEST, "tls": self.CLIENT_HELLO}[self.mode]
        try:
            if first:
                sock.send(first)
        except OSError:
            self._drop(sock)
            return
        self.selector.modify(sock, selectors.EVENT_READ, "open")
        if self.mode == "trickle":
            self._next_byte[sock] = time.monotonic() + self.trickle_every

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self._next_byte.pop(sock, None)
        sock.close()
        self.open -= 1
        self.closed_by_server += 1

    def run(self) -> None:
        for _ in range(self.count):
            self._connect()
        budget, last = 0.0, time.monotonic()
        while not self._halt.is_set():
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "connecting":
                    self._connected(sock)
                    continue
                try:
                    if not sock.recv(65536):
                        self._drop(sock)
                except OSError:
                    self._drop(sock)
            now = time.monotonic()
            for sock, due in list(self._next_byte.items()):
                if due <= now:
                    try:
                        sock.send(b"X")
                    except OSError:
                        self._drop(sock)
                        continue
                    self._next_byte[sock] = now + self.trickle_every
            budget = min(budget + (now - last) * self.reopen_per_second, self.count)
            last = now
            while self.open < self.count and budget >= 1:
                budget -= 1
                self._connect()
            if self.open >= self.count or self.opened >= self.count:
                self.ready.set()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def unfinished_headers(port: int, connections: int, lines: int = 99,
                       line_bytes: int = 65_000) -> int:
    """Each connection sends a request line and up to `lines` header lines of `line_bytes`,
    never the blank line that ends a head; returns the bytes the server took in all."""
    sent = [0] * connections
    payload = b"X-Pad: " + b"a" * (line_bytes - 9) + b"\r\n"

    def one(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                for _ in range(lines):
                    sock.sendall(payload)
                    sent[i] += len(payload)
        except OSError:
            pass  # refused, reset or closed: what a bounded server does

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sum(sent)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0,
                 pause_after_send: float = 0.0) -> tuple[bytes, float, bool]:
    """Send raw bytes, read until the server closes or `timeout`; (reply, seconds, closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if pause_after_send:
            time.sleep(pause_after_send)
        reply = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return reply, time.monotonic() - started, True
                reply += chunk
        except TimeoutError:
            return reply, time.monotonic() - started, False
        except ConnectionResetError:
            return reply, time.monotonic() - started, True


class Flood:
    """Wrong passwords at `rate` a second for `seconds`, each on a new connection from one of
    `sources` in turn (loopback addresses), by up to `workers` client threads."""

    def __init__(self, port: int, rate: float, seconds: float, sources: tuple[str, ...],
                 tls: ssl.SSLContext | None = None, user: str = "prometheus",
                 workers: int = 200, timeout: float = 5.0) -> None:
        self.port, self.rate, self.seconds, self.sources = port, rate, seconds, sources
        self.tls, self.user, self.timeout = tls, user, timeout
        self.statuses: dict[str, int] = {}
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._next = 0
        self._total = int(rate * seconds)
        self._started = 0.0
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True)
                         for _ in range(workers)]

    def start(self) -> Flood:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self._total or self._halt.is_set():
                return None
            self._next += 1
            return self._next - 1

    def _work(self) -> None:
        while (i := self._take()) is not None:
            due = self._started + i / self.rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            started = time.monotonic()
            try:
                status, _ = request(self.port, "/metrics", tls=self.tls,
                                    authorization=basic(self.user, f"guess-{i}-{os.getpid()}"),
                                    timeout=self.timeout,
                                    source=self.sources[i % len(self.sources)])
                outcome = str(status)
            except OSError as exc:
                outcome = type(exc).__name__
            with self._lock:
                self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
                self.latencies.append(time.monotonic() - started)

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def join(self) -> None:
        for t in self._threads:
            t.join(self.seconds + self.timeout + 10)

    def achieved(self) -> float:
        return sum(self.statuses.values()) / self.seconds


class FloodProcess:
    """A Flood in a process of its own: its 100+ client threads and TLS handshakes must not
    share the scraper's interpreter (the test's GIL would slow the scraper, not the exporter)."""

    def __init__(self, port: int, rate: float, seconds: float, sources: tuple[str, ...],
                 ca_file: Path | None = None, workers: int = 200, timeout: float = 5.0) -> None:
        self.seconds = seconds
        self.args = [sys.executable, "-m", "tests.support.attack", str(port), str(rate),
                     str(seconds), ",".join(sources), str(ca_file or ""), str(workers),
                     str(timeout)]
        self.proc: subprocess.Popen[str] | None = None
        self.statuses: dict[str, int] = {}
        self.latencies: list[float] = []

    def start(self) -> FloodProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[2])
        return self

    def join(self, timeout: float | None = None) -> None:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout or self.seconds + 60)
        result = json.loads(out.strip().splitlines()[-1])
        self.statuses, self.latencies = result["statuses"], result["latencies"]

    def stop(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the flood stops, reports what it had
        self.join(30)

    def achieved(self) -> float:
        return sum(self.statuses.values()) / self.seconds


def _flood_main(argv: list[str]) -> None:
    port, rate, seconds, sources, ca, workers, timeout = argv
    tls = ssl.create_default_context(cafile=ca) if ca else None
    flood = Flood(int(port), float(rate), float(seconds), tuple(sources.split(",")), tls=tls,
                  workers=int(workers), timeout=float(timeout)).start()
    try:
        flood.join()
    except KeyboardInterrupt:
        flood.stop()
    print(json.dumps({"statuses": flood.statuses, "latencies": flood.latencies}), flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    _flood_main(sys.argv[1:])
