"""The HTTP server: one event-loop thread, a bounded number of connections, a deadline for each.

A thread per connection let anyone who can reach the port exhaust the process: 1,100 silent
connections took every file descriptor (scrapes timed out), 200 unfinished 6 MB headers took
1.3 GB, a header line every 10 s held a thread for ever (the timeout was per read). Here every
connection is a small object served by one selector loop (epoll), and what a client can hold is
bounded by design:

- at most `connection_limit()` connections (MAX_CONNECTIONS, and always FD_RESERVE below the
  open-file limit, so the poll, the database and the reload keep theirs). When the limit is
  reached a new connection still gets in: among the connections that have not finished a
  request, one that made no progress for longest is closed (preferring the address holding
  the most connections), then the longest idle keep-alive one; so slow clients cannot lock out
  a scraper that sends its request at once;
- a whole-request deadline: REQUEST_SECONDS from accept (TLS handshake included), or from the
  first byte of a keep-alive request, to the end of the head and of a declared body, however the
  bytes trickle in; IDLE_SECONDS between keep-alive requests; WRITE_SECONDS to send a response;
- a head is at most exporter.web.http1.MAX_HEAD_BYTES, refused while it arrives (431);
- a declared body up to MAX_BODY is read and thrown away before the next request; a larger or
  chunked one gets its answer and the connection is closed (never read as a request);
- bcrypt runs on exporter.web.gate's thread, bounded and fair; the loop only reads the cache.
Scrapes copy the bytes the last poll rendered (exporter.web.routes); a slow reader holds a view
of them, not a copy. TLS handshakes are non-blocking steps of the loop, so a client that never
finishes one holds nothing but its slot until its deadline.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from exporter.handoff import Store
from exporter.web.auth import BasicAuth, Pending
from exporter.web.gate import Gate, Outcome
from exporter.web.http1 import (
    MAX_HEAD_BYTES,
    BadRequest,
    Request,
    head_end,
    parse_head,
    response_head,
)
from exporter.web.routes import (
    READ_METHODS,
    TEXT,
    WRITE_METHODS,
    Response,
    check_telemetry_path,
    route,
)

log = logging.getLogger(__name__)

HeadersProvider = Callable[[], Mapping[str, str]]
AuthProvider = Callable[[], BasicAuth | None]  # the current basic auth, None when off

REQUEST_SECONDS = 10.0  # Prometheus sends its request at once
IDLE_SECONDS = 60.0  # keep-alive between scrapes (Prometheus reuses its connection)
WRITE_SECONDS = 60.0
LINGER_SECONDS = 2.0  # after the last answer: read what the client still sends, then close
MAX_CONNECTIONS = 512
FD_RESERVE = 64
MAX_BODY = 64 * 1024
STUCK_WRITE_SECONDS = 5.0
EVICTION_WINDOW = 16  # a response not sent after this may be closed to make room
SWEEP_SECONDS = 0.25
PRESSURE_LOG_SECONDS = 30.0
ACCEPTS_PER_WAKE = 64
REQUESTS_PER_TURN = 32
_RECV = 64 * 1024
_SEND = 64 * 1024
_LINGER_BYTES = 256 * 1024
CHALLENGE = 'Basic realm="cj-health-exporter", charset="UTF-8"'
_DENIED = Response(401, TEXT, b"Unauthorized\n", (("WWW-Authenticate", CHALLENGE),), close=True)
_SHED = {
    Outcome.SHED_CLIENT: Response(429, TEXT, b"too many authentication attempts\n",
                                  (("Retry-After", "1"),), close=True),
    Outcome.SHED: Response(503, TEXT, b"busy checking credentials\n", (("Retry-After", "1"),),
                           close=True),
}


class TLSProvider(Protocol):
    """What the server needs for TLS (exporter.web.reload.WebSecurity provides it)."""

    def context(self) -> ssl.SSLContext:
        """The context for the next connection (may change when certificates are rotated)."""

    def accept_peer(self, sock: ssl.SSLSocket) -> bool:
        """After the handshake: whether this verified client may go on (client_allowed_sans)."""


def connection_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class Stats:
    """What the server did to protect itself (logged when it happens, read by tests)."""

    def __init__(self) -> None:
        self.evicted = 0  # closed to make room for a new connection
        self.refused = 0  # closed at once: no room and nothing to evict
        self.timed_out = 0
        self.bad_requests = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


# Connection states.
HANDSHAKE, READ, BODY, AUTH, WRITE, LINGER, CLOSED = range(7)


class _Conn:
    """One client connection, driven by the loop thread only."""

    def __init__(self, loop: _Loop, sock: socket.socket, client: str) -> None:
        self.loop = loop
        self.sock = sock
        self.client = client
        self.state = HANDSHAKE if isinstance(sock, ssl.SSLSocket) else READ
        self.buf = bytearray()
        self.deadline = time.monotonic() + REQUEST_SECONDS
        self.events = 0
        self.out: deque[memoryview] = deque()
        self.close_after = False
        self.discard = 0  # body bytes still to read and drop
        self.request: Request | None = None
        self.served = 0
        self.driving = False

    # -- events -----------------------------------------------------------------------------

    def start(self) -> None:
        self.loop.enter(self, self.loop.fresh)
        if self.state == HANDSHAKE:
            self._handshake()
        else:
            self._drive()  # the request is often there already

    def on_event(self) -> None:
        if self.state == HANDSHAKE:
            self.loop.touch(self)  # bytes of the handshake arrived
            self._handshake()
        elif self.state in (READ, BODY):
            self._drive()
        elif self.state == WRITE:
            self._send()
        elif self.state == LINGER:
            self._drain()

    def expire(self) -> None:
        if self.state in (HANDSHAKE, READ, BODY) and (self.buf or self.served == 0):
            self.loop.stats.timed_out += 1
        self.close("deadline passed")

    def close(self, why: str) -> None:
        if self.state == CLOSED:
            return
        if why:
            log.debug("connection from %s closed: %s", self.client, why)
        self.state = CLOSED
        self.loop.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- TLS --------------------------------------------------------------------------------

    def _handshake(self) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.want(self, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.loop.want(self, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.close(f"TLS handshake failed: {exc}")
            return
        tls = self.loop.tls
        if tls is not None and not tls.accept_peer(self.sock):
            self.close("client certificate has none of client_allowed_sans")
            return
        self.state = READ
        self._drive()

    # -- reading ----------------------------------------------------------------------------

    def _drive(self) -> None:
        """Parse what is buffered, answer, read more while a request is incomplete.

        A loop, not recursion: an answer sent at once brings the connection back to READ, and
        the next pipelined request is parsed by the same loop (200 pipelined requests once
        recursed past Python's limit). After REQUESTS_PER_TURN answers the connection yields
        to the others and resumes on the next turn of the event loop.
        """
        if self.driving:
            return  # called from inside the loop below (an answer that went out at once)
        self.driving = True
        try:
            answered = 0
            while self.state in (READ, BODY):
                if self._parse():
                    answered += 1
                    if answered >= REQUESTS_PER_TURN and self.state in (READ, BODY):
                        self.loop.call_soon(self._drive)
                        return
                    continue
                room = self.discard if self.state == BODY else MAX_HEAD_BYTES + 1 - len(self.buf)
                got = self._recv(min(max(room, 1), _RECV))
                if got is None:
                    return
                if not got:
                    self.loop.want(self, selectors.EVENT_READ)
                    return
        finally:
            self.driving = False

    def _recv(self, size: int) -> bytes | None:
        """Bytes read now (b"" when none are there yet), None when the connection ended."""
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError):
            return b""
        except ssl.SSLWantWriteError:
            self.loop.want(self, selectors.EVENT_WRITE)
            return None
        except (OSError, ValueError) as exc:
            self.close(f"read failed: {exc}")
            return None
        if not data:
            self.close("" if not self.buf else "client closed mid-request")
            return None
        if self.state == READ and not self.buf and self.served:
            self.loop.enter(self, self.loop.fresh)  # idle keep-alive -> a new request
            self.deadline = time.monotonic() + REQUEST_SECONDS
        self.buf += data
        self.loop.touch(self)
        return data

    def _parse(self) -> bool:
        """Advance on the buffer; True once a request was dispatched or refused."""
        if self.state == READ:
            if not self.buf:
                return False
            try:
                end = head_end(self.buf)
                if end is None:
                    return False
                request = parse_head(self.buf[:end])
            except BadRequest as exc:
                self.loop.stats.bad_requests += 1
                log.debug("bad request from %s: %s", self.client, exc)
                self._answer(Response(exc.status, TEXT, f"{exc}\n".encode(), close=True))
                return True
            del self.buf[:end]
            self._begin_body(request)
        if self.state == BODY:
            take = min(self.discard, len(self.buf))
            del self.buf[:take]
            self.discard -= take
            if self.discard:
                return False
            assert self.request is not None
            self._dispatch(self.request)
        return True

    def _begin_body(self, request: Request) -> None:
        self.request = request
        self.state = BODY
        length = request.content_length
        expect = "100-continue" in request.header("expect").lower()
        if request.chunked or length > MAX_BODY or (length and expect):
            # Answered without reading the body (an Expect client has not sent it yet), and
            # closed: its bytes must never be taken for the next request.
            self.close_after = True
            self.discard = 0
        else:
            self.discard = length
        if not request.keep_alive:
            self.close_after = True

    # -- answering --------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        self.loop.leave(self)  # not evictable while it is being answered
        self.state = AUTH
        if request.method not in READ_METHODS and request.method not in WRITE_METHODS:
            self._answer(Response(501, TEXT, b"not implemented\n", close=True))
            return
        auth = self.loop.auth() if self.loop.auth else None
        found = True if auth is None else auth.lookup(request.header("authorization"))
        if isinstance(found, Pending):
            assert auth is not None
            outcome = self.loop.gate().submit(auth, found, self.client, self._checked)
            if outcome is not None:
                self._checked(outcome)
            return
        self._checked(Outcome.ALLOW if found else Outcome.DENY)

    def _checked(self, outcome: Outcome) -> None:
        if self.state != AUTH:
            return  # closed while bcrypt ran (the server is stopping)
        if outcome is Outcome.ALLOW:
            assert self.request is not None
            self._answer(route(self.loop.store, self.request, self.loop.telemetry_path))
        elif outcome is Outcome.DENY:
            self._answer(_DENIED)  # nothing of an unauthenticated request is kept
        else:
            self._answer(_SHED[outcome])

    def _answer(self, response: Response) -> None:
        self.close_after = self.close_after or response.close
        fields = [("Content-Type", response.content_type),
                  ("Content-Length", str(len(response.body))), *response.headers,
                  *self.loop.headers().items()]
        if self.close_after:
            fields.append(("Connection", "close"))
        head = response_head(response.status, fields)
        body = b"" if self.request is not None and self.request.method == "HEAD" \
            else response.body
        self.out.clear()
        if len(body) <= 16 * 1024:
            self.out.append(memoryview(head + body))  # one segment for a small page
        else:
            self.out.extend((memoryview(head), memoryview(body)))  # the page itself, no copy
        self.state = WRITE
        self.loop.enter_writing(self)
        self.deadline = time.monotonic() + WRITE_SECONDS
        self._send()

    def _send(self) -> None:
        while self.out:
            chunk = self.out[0]
            # A TLS write that would block must be retried with the same bytes: a fixed slice.
            piece = chunk[:_SEND]
            try:
                sent = self.sock.send(piece)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self.loop.want(self, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self.loop.want(self, selectors.EVENT_READ)
                return
            except (OSError, ValueError) as exc:
                self.close(f"write failed: {exc}")
                return
            if sent >= len(chunk):
                self.out.popleft()
            else:
                self.out[0] = chunk[sent:]
        self._sent()

    def _sent(self) -> None:
        if self.close_after:
            self._linger()
            return
        self.served += 1
        self.request = None
        self.state = READ
        self.deadline = time.monotonic() + (REQUEST_SECONDS if self.buf else IDLE_SECONDS)
        self.loop.enter(self, self.loop.fresh if self.buf else self.loop.idle)
        self._drive()  # a pipelined request may be buffered already

    def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends: closing with unread
        bytes would make the kernel reset the connection and maybe lose the answer."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self.close("")
            return
        self.state = LINGER
        self.discard = _LINGER_BYTES
        self.deadline = time.monotonic() + LINGER_SECONDS
        self.loop.enter(self, self.loop.linger)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(_RECV)
            except (BlockingIOError, ssl.SSLWantReadError):
                self.loop.want(self, selectors.EVENT_READ)
                return
            except (OSError, ValueError):
                data = b""
            self.discard -= len(data)
            if not data or self.discard <= 0:
                self.close("")
                return


class _Loop:
    """The selector loop: accepts, drives connections, runs deadlines; one thread."""

    def __init__(self, listener: socket.socket, store: Store, auth: AuthProvider | None,
                 tls: TLSProvider | None, headers: HeadersProvider | None,
                 telemetry_path: str) -> None:
        self.listener = listener
        self.store = store
        self.auth = auth
        self.tls = tls
        self.headers: HeadersProvider = headers or dict
        self.telemetry_path = telemetry_path
        self.limit = connection_limit()
        self.stats = Stats()
        self.selector = selectors.DefaultSelector()
        self.conns: set[_Conn] = set()
        self.per_client: Counter[str] = Counter()
        # Eviction order: lingering first, then unfinished requests, then idle keep-alive,
        # each oldest first; a response stuck for STUCK_WRITE_SECONDS last.
        self.linger: OrderedDict[_Conn, None] = OrderedDict()
        self.fresh: OrderedDict[_Conn, None] = OrderedDict()
        self.idle: OrderedDict[_Conn, None] = OrderedDict()
        self.writing: OrderedDict[_Conn, float] = OrderedDict()
        self._tiers: tuple[OrderedDict[_Conn, Any], ...] = (self.linger, self.fresh, self.idle,
                                                           self.writing)
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._gate: Gate | None = None
        self._stopping = False
        self._accept_paused_until = 0.0
        self._logged = dict(self.stats.as_dict(), shed=0)
        self._logged_at = time.monotonic()

    # -- used by connections ----------------------------------------------------------------

    def gate(self) -> Gate:
        if self._gate is None:  # basic auth may be switched on by a reload
            self._gate = Gate(self.call_soon)
            self._gate.start()
        return self._gate

    def want(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self.selector.register(conn.sock, events, conn)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events

    def enter(self, conn: _Conn, tier: OrderedDict[_Conn, None]) -> None:
        """Put `conn` at the young end of an eviction tier."""
        self._untier(conn)
        tier[conn] = None

    def touch(self, conn: _Conn) -> None:
        """`conn` made progress (bytes arrived): to the young end of its tier."""
        if conn in self.fresh:
            self.fresh.move_to_end(conn)

    def enter_writing(self, conn: _Conn) -> None:
        self._untier(conn)
        self.writing[conn] = time.monotonic()

    def _untier(self, conn: _Conn) -> None:
        for tier in self._tiers:
            tier.pop(conn, None)

    def leave(self, conn: _Conn) -> None:
        """Out of every tier (not evictable) and no events until it asks again."""
        self._untier(conn)
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0

    def forget(self, conn: _Conn) -> None:
        self.leave(conn)
        if conn in self.conns:
            self.conns.discard(conn)
            self.per_client[conn.client] -= 1
            if not self.per_client[conn.client]:
                del self.per_client[conn.client]

    def call_soon(self, func: Callable[[], None]) -> None:
        """From any thread: run `func` on the loop thread."""
        self._calls.append(func)
        # OSError: a wake-up is pending already (buffer full), or the loop is gone.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while not self._stopping:
            try:
                for key, _ in self.selector.select(SWEEP_SECONDS):
                    self._handle(key.data)
                while self._calls:
                    self._safely(self._calls.popleft())
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + SWEEP_SECONDS
                    self._sweep(now)
            except Exception:  # a bug outside any one connection: log it, keep serving
                log.error("HTTP loop error", exc_info=True)
                time.sleep(0.1)
        self._close_all()

    def stop(self) -> None:
        self._stopping = True
        self.call_soon(lambda: None)

    def _handle(self, data: object) -> None:
        if data is None:
            self._accept()
        elif data is self._wake_r:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        else:
            assert isinstance(data, _Conn)
            self._safely(data.on_event, data)

    def _safely(self, func: Callable[[], None], conn: _Conn | None = None) -> None:
        try:
            func()
        except Exception:  # a bug: log it, drop that connection, keep serving the others
            log.error("error serving %s", conn.client if conn else "a connection",
                      exc_info=True)
            if conn is not None:
                conn.close("")

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors()
                return
            if len(self.conns) >= self.limit and not self._evict():
                self.stats.refused += 1
                sock.close()
                continue
            self._adopt(sock, str(addr[0]))

    def _adopt(self, sock: socket.socket, client: str) -> None:
        sock.setblocking(False)
        try:
            # Headers and body may leave in two writes: with Nagle, a keep-alive client's
            # delayed ACK held the body back ~40 ms per scrape (bench/poll.py).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.context().wrap_socket(sock, server_side=True,
                                                      do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.debug("connection from %s dropped: %s", client, exc)
            sock.close()
            return
        conn = _Conn(self, sock, client)
        self.conns.add(conn)
        self.per_client[client] += 1
        self._safely(conn.start, conn)

    def _evict(self) -> bool:
        for tier in (self.linger, self.fresh, self.idle):
            if tier:
                self.stats.evicted += 1
                self._victim(tier).close("closed to make room for a new connection")
                return True
        if self.writing:
            conn, since = next(iter(self.writing.items()))
            if time.monotonic() - since > STUCK_WRITE_SECONDS:
                self.stats.evicted += 1
                conn.close("closed to make room for a new connection")
                return True
        return False

    def _victim(self, tier: OrderedDict[_Conn, None]) -> _Conn:
        """Of the EVICTION_WINDOW connections that progressed least recently, the one whose
        address holds the most connections: a flood from a few hosts pays, not the scraper
        whose handshake is one round trip from done."""
        oldest = list(itertools.islice(tier, EVICTION_WINDOW))
        return max(oldest, key=lambda c: self.per_client[c.client])  # ties: the oldest

    def _out_of_descriptors(self) -> None:
        """The process ran out of file descriptors elsewhere: make room, and stop accepting
        for a moment instead of spinning on a listen socket that stays readable."""
        if not self._evict():
            self.selector.unregister(self.listener)
            self._accept_paused_until = time.monotonic() + 0.1
        log.warning("out of file descriptors: %d connections open (limit %d)",
                    len(self.conns), self.limit)

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self.conns if c.deadline <= now]:
            self._safely(conn.expire, conn)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ, None)
        if now - self._logged_at >= PRESSURE_LOG_SECONDS:
            self._log_pressure(now)

    def _log_pressure(self, now: float) -> None:
        current = dict(self.stats.as_dict(), shed=self._gate.shed if self._gate else 0)
        delta = {k: v - self._logged[k] for k, v in current.items() if v != self._logged[k]}
        self._logged, self._logged_at = current, now
        if any(delta.get(k) for k in ("evicted", "refused", "shed")):
            log.warning("HTTP under pressure in the last %.0fs (limit %d connections): %s",
                        PRESSURE_LOG_SECONDS, self.limit,
                        ", ".join(f"{v} {k}" for k, v in sorted(delta.items())))

    def _close_all(self) -> None:
        for conn in list(self.conns):
            conn.close("")
        if self._gate is not None:
            self._gate.stop()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


class MetricsServer:
    """The HTTP server on its loop thread; `stop()` closes every connection and the socket."""

    def __init__(self, host: str, port: int, store: Store,
                 auth: AuthProvider | None = None, tls: TLSProvider | None = None,
                 headers: HeadersProvider | None = None,
                 telemetry_path: str = "/metrics") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            # A backlog of 5 (socketserver's) made the kernel drop SYNs in bursts and clients
            # retry after 1, 3, 7 s (200 concurrent scrapes: p99 4.7 s).
            listener.listen(socket.SOMAXCONN)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.loop = _Loop(listener, store, auth, tls, headers,
                          check_telemetry_path(telemetry_path))
        self._thread = threading.Thread(target=self.loop.run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.loop.stop()
        self._thread.join(timeout=5)
        self._listener.close()
