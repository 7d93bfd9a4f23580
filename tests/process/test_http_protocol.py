"""Issue 12 item 8 (HTTP): request desync, HTTP/0.9, HTTP/2 and junk, against a real `serve`.

A GET's body used to be parsed as the next request on the connection (`GET /healthz` with a
Content-Length whose body was `GET /nope-smuggled` answered 200, then 404 for the smuggled
path); an HTTP/0.9 line held a thread 30 s; `HTTP/2.0`, the h2 preface and binary junk got an
HTML page without a status line. Raw bytes go over real sockets here, and the behaviour kept
from before is checked alongside: 405/501/404/414/431, HEAD, keep-alive and pipelining, and
--web.telemetry-path.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.attack import LimitedExporter, raw_exchange
from tests.support.database import SeededDb
from tests.support.process import free_port, http_get


@pytest.fixture(scope="module")
def exporter(pg_server: object) -> Iterator[LimitedExporter]:
    from tests.support.database import drop_database, new_database, seed, url_string

    name = new_database(pg_server)  # type: ignore[arg-type]
    url = url_string(pg_server.url(name))  # type: ignore[attr-defined]
    seed(url)
    try:
        with LimitedExporter(url, nofile=1024, poll_interval=1.0,
                             telemetry_path="/probe/metrics") as exp:
            yield exp
        assert "Traceback" not in exp.output() and "error serving" not in exp.output()
    finally:
        drop_database(pg_server, name)  # type: ignore[arg-type]


def statuses(reply: bytes, head_request: bool = False) -> list[int]:
    """The status codes of every response in a byte stream, in order (framed by their
    Content-Length, as a client reads them)."""
    found = []
    while reply:
        head, sep, rest = reply.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), reply[:200]
        found.append(int(head.split()[1]))
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        body_length = int(fields[b"Content-Length"])
        reply = rest if head_request else rest[body_length:]
    return found


def test_a_get_body_is_never_read_as_a_request(exporter: LimitedExporter) -> None:
    smuggled = b"GET /nope-smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    # A declared body is read and dropped; the connection then serves the next real request.
    reply, seconds, closed = raw_exchange(exporter.port, (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert statuses(reply) == [200, 200], reply
    assert closed and seconds < 2
    # A chunked body on a GET: answered, then the connection is closed unread.
    reply, _, closed = raw_exchange(exporter.port, (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"))
    assert statuses(reply) == [200] and closed, reply
    # Both framings at once is the classic smuggling vector: refused.
    reply, _, closed = raw_exchange(exporter.port, (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled))
    assert statuses(reply) == [400] and closed, reply
    # A body too large to drop is not read either: answered and closed.
    reply, _, closed = raw_exchange(exporter.port, (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + smuggled))
    assert statuses(reply) == [200] and closed, reply
    # Two different Content-Length values.
    reply, _, _ = raw_exchange(exporter.port, (
        b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc"))
    assert statuses(reply) == [400], reply


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /\r\n", 400),  # HTTP/0.9
    (b"GET /probe/metrics\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"GET /healthz HTTP/9.9\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # the h2 preface
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, 400),  # TLS
    (bytes(range(256)) * 256, 400),  # 64 KB of binary
    (b"GET /healthz HTTP/1.1\r\nno colon here\r\nHost: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),  # space before the colon
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
])
def test_malformed_requests_get_a_status_line_and_a_close(exporter: LimitedExporter,
                                                          data: bytes, status: int) -> None:
    reply, seconds, closed = raw_exchange(exporter.port, data, timeout=5)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:200]
    assert closed, "the connection must be closed after a bad request"
    assert seconds < 2, f"held {seconds:.1f} s"


def test_methods_paths_head_and_keep_alive(exporter: LimitedExporter) -> None:
    port = exporter.port
    for method, status in ((b"POST", 405), (b"DELETE", 405), (b"PUT", 405), (b"PATCH", 405),
                           (b"FOO", 501), (b"OPTIONS", 501), (b"TRACE", 501), (b"get", 501)):
        reply, _, closed = raw_exchange(port, method + b" /probe/metrics HTTP/1.1\r\n\r\n")
        assert statuses(reply) == [status] and closed, (method, reply[:120])
        if status == 405:
            assert b"\r\nAllow: GET, HEAD\r\n" in reply
    for path, status in ((b"/probe/metrics", 200), (b"/probe/metrics?x=%zz%00", 200),
                         (b"/metrics", 404), (b"/", 200), (b"/healthz", 200),
                         (b"/../../etc/passwd", 404), (b"//probe/metrics", 404),
                         (b"/probe/metrics%00", 404), (b"*", 404)):
        reply, _, _ = raw_exchange(port, b"GET " + path + b" HTTP/1.1\r\nConnection: close"
                                                          b"\r\n\r\n")
        assert statuses(reply) == [status], (path, reply[:120])
    # HEAD: the GET's headers, no body.
    reply, _, _ = raw_exchange(port, b"HEAD /probe/metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert statuses(reply, head_request=True) == [200] and body == b""
    assert b"Content-Length: " in head
    # 200 pipelined requests on one connection: 200 answers, in order, on that connection.
    reply, seconds, _ = raw_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n" * 199
                                     + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert statuses(reply) == [200] * 200
    print(f"\n200 pipelined requests answered in {seconds * 1000:.0f} ms")
    # HTTP/1.0 closes after the answer unless asked to keep alive; HTTP/1.1 keeps it open.
    reply, _, closed = raw_exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert statuses(reply) == [200] and closed
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET /probe/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 ")
    # Expect: 100-continue with a body: answered without reading the body, then closed.
    reply, _, closed = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nContent-Length: 10\r\n"
                                          b"Expect: 100-continue\r\n\r\n")
    assert statuses(reply) == [200] and closed


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_telemetry_path(exporter: LimitedExporter, seeded_db: SeededDb) -> None:
    status, headers, body = http_get(f"{exporter.url}/probe/metrics")
    assert status == 200 and b"cj_health_up 1" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert http_get(f"{exporter.url}/metrics")[0] == 404
    for bad in ("metrics", "/", "/healthz", "/a?b"):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "serve", "--dsn", seeded_db.url,
             "--web.listen-address", f"127.0.0.1:{free_port()}", "--web.telemetry-path", bad],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (bad, result.stderr)
        assert "web.telemetry-path" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert time.monotonic() - started < 30
