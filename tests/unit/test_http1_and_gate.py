"""The request-head parser (exporter.web.http1) and the bcrypt gate's bounds and turns
(exporter.web.gate), in-process; the same behaviour against a real `serve` is in
tests/process/test_http_protocol.py and test_auth_flood.py."""

from __future__ import annotations

import base64
import threading
import time
from http import HTTPStatus

import bcrypt
import pytest

from exporter.web.auth import BasicAuth, Pending
from exporter.web.gate import Gate, Outcome
from exporter.web.http1 import MAX_HEAD_BYTES, BadRequest, head_end, parse_head


def test_a_complete_head_is_found_and_parsed() -> None:
    data = b"\r\nGET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: t\r\nAccept: u\r\n\r\nNEXT"
    end = head_end(data)
    assert end is not None and data[end:] == b"NEXT"
    request = parse_head(data[:end])
    assert (request.method, request.path, request.version) == ("GET", "/metrics", (1, 1))
    assert request.header("accept") == "t, u" and request.keep_alive
    assert parse_head(b"GET / HTTP/1.0\n\n").keep_alive is False  # bare LF is accepted
    assert parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive is False


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/2.0\r\n", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    (b"\x16\x03\x01", HTTPStatus.BAD_REQUEST),
    (b"GET /" + b"a" * 9000, HTTPStatus.REQUEST_URI_TOO_LONG),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
    (b"\r\n" * 10 + b"GET / HTTP/1.1\r\n", HTTPStatus.BAD_REQUEST),
])
def test_hopeless_heads_are_refused_before_they_end(data: bytes, status: HTTPStatus) -> None:
    with pytest.raises(BadRequest) as caught:
        head_end(data)
    assert caught.value.status == status


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_ambiguous_heads_are_bad_requests(head: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == HTTPStatus.BAD_REQUEST


def _gate_with_a_blocked_worker() -> tuple[Gate, BasicAuth, threading.Event, list[str]]:
    """A gate whose bcrypt thread is held on its first check until the event is set."""
    auth = BasicAuth({"u": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))})
    release = threading.Event()
    order: list[str] = []
    verify = auth.verify

    def slow_verify(pending: Pending) -> bool:
        release.wait(10)
        order.append(pending.password.decode())
        return verify(pending)

    auth.verify = slow_verify  # type: ignore[method-assign]
    gate = Gate(lambda call: call())
    gate.start()
    return gate, auth, release, order


def _pending(auth: BasicAuth, password: str) -> Pending:
    found = auth.lookup("Basic " + base64.b64encode(f"u:{password}".encode()).decode())
    assert isinstance(found, Pending)
    return found


def test_the_gate_bounds_each_client_and_takes_turns() -> None:
    gate, auth, release, order = _gate_with_a_blocked_worker()
    answers: dict[str, Outcome] = {}
    try:
        def submit(password: str, client: str) -> Outcome | None:
            def done(outcome: Outcome) -> None:
                answers[password] = outcome
            return gate.submit(auth, _pending(auth, password), client, done)

        assert submit("first", "10.0.0.1") is None  # running (held)
        time.sleep(0.1)
        assert submit("a1", "10.0.0.1") is None
        assert submit("a2", "10.0.0.1") is None
        assert submit("a3", "10.0.0.1") is Outcome.SHED_CLIENT  # 2 queued per client
        for i in range(Gate.TOTAL - 2):
            assert submit(f"b{i}", f"10.0.1.{i}") is None
        # Full: a client with nothing queued displaces the greediest client's newest check.
        assert submit("prometheus", "10.0.9.9") is None
        assert answers["a2"] is Outcome.SHED
        release.set()
        deadline = time.monotonic() + 10
        while "prometheus" not in answers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answers["prometheus"] is Outcome.DENY
        # Turns: clients never served go first, in order of arrival (Prometheus among them);
        # 10.0.0.1, served already, waits until they have had theirs.
        assert order[:3] == ["first", "b0", "b1"]
        assert order.index("prometheus") < order.index("a1") == len(order) - 1
    finally:
        release.set()
        gate.stop()
