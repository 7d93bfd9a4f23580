"""HTTP endpoint: /metrics serves pre-rendered bytes; the other pages are exporter.web.pages'.

A scrape only copies the bytes the last poll rendered (content negotiation picks OpenMetrics or
text 0.0.4, gzip or not), so it never touches the database and never renders. Every endpoint is
read-only: anything but GET and HEAD gets 405.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from exporter.handoff import Store
from exporter.web.negotiation import choose
from exporter.web.pages import page as other_page

log = logging.getLogger(__name__)

# True lets the request through; False answers 401 with a Basic challenge.
Authorizer = Callable[[BaseHTTPRequestHandler], bool]
HeadersProvider = Callable[[], Mapping[str, str]]
# A client that connects and then goes silent (or never finishes its TLS handshake) gives its
# thread back after this long; Prometheus sends its request at once, and reconnects if an idle
# keep-alive connection was closed between scrapes.
REQUEST_TIMEOUT_SECONDS = 30.0
CHALLENGE = 'Basic realm="cj-health-exporter", charset="UTF-8"'


class TLSProvider(Protocol):
    """What the server needs for TLS (exporter.web.reload.WebSecurity provides it)."""

    def context(self) -> ssl.SSLContext:
        """The context for the next connection (may change when certificates are rotated)."""

    def accept_peer(self, sock: ssl.SSLSocket) -> bool:
        """After the handshake: whether this verified client may go on (client_allowed_sans)."""


class PeerRejected(ConnectionError):
    """The client certificate verified but is not one of the allowed ones."""


def make_handler(store: Store, authorize: Authorizer | None = None,
                 tls: TLSProvider | None = None,
                 headers: HeadersProvider | None = None,
                 telemetry_path: str = "/metrics") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cj-health-exporter"
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes; with Nagle on, a keep-alive client's delayed
        # ACK held the body back ~40 ms on every scrape of a small page (bench/poll.py).
        disable_nagle_algorithm = True
        timeout = REQUEST_TIMEOUT_SECONDS

        def setup(self) -> None:
            super().setup()  # applies `timeout` to the socket, the handshake included
            if isinstance(self.connection, ssl.SSLSocket):
                # The handshake runs here, in this connection's own thread: in the accept loop
                # one slow client would hold up every other connection.
                self.connection.do_handshake()
                if tls is not None and not tls.accept_peer(self.connection):
                    raise PeerRejected("client certificate has none of client_allowed_sans")

        def do_GET(self) -> None:
            self._respond(head=False)

        def do_HEAD(self) -> None:
            self._respond(head=True)

        def _not_allowed(self) -> None:
            if not self._authorized(head=False):
                return
            self.close_connection = True  # the request body was not read: do not parse it next
            self._send(405, "text/plain; charset=utf-8", b"method not allowed\n",
                       extra={"Allow": "GET, HEAD"})

        def _authorized(self, head: bool) -> bool:
            if authorize is None or authorize(self):
                return True
            self.close_connection = True  # nothing of an unauthenticated request is kept
            self._send(401, "text/plain; charset=utf-8", b"Unauthorized\n",
                       {"WWW-Authenticate": CHALLENGE}, head)
            return False

        do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

        def _respond(self, head: bool) -> None:
            if not self._authorized(head):
                return
            page = store.page
            path = self.path.split("?", 1)[0]
            if path == telemetry_path:
                body, ctype, gz = choose(page.metrics, self.headers.get("Accept", ""),
                                         self.headers.get("Accept-Encoding", ""))
                extra = {"Content-Encoding": "gzip", "Vary": "Accept, Accept-Encoding"} if gz \
                    else {"Vary": "Accept, Accept-Encoding"}
                self._send(200, ctype, body, extra, head)
            elif found := other_page(path, page.status, telemetry_path):
                self._send(found[0], found[1], found[2], {}, head)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n", {}, head)

        def _send(self, code: int, ctype: str, body: bytes,
                  extra: dict[str, str] | None = None, head: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            for key, value in (headers() if headers else {}).items():
                self.send_header(key, value)  # http_server_config.headers of the web config
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: TLSProvider | None = None
    # socketserver listens with a backlog of 5: a burst of connections (several Prometheus
    # servers, a dashboard, a storm) overflows it, the kernel drops SYNs and clients retry after
    # 1, 3, 7 s. Measured with 200 concurrent scrapes: p99 4.7 s, max 8.4 s with 5.
    request_queue_size = socket.SOMAXCONN

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        if self.tls is None:
            return conn, addr
        try:
            # The handshake is deferred to Handler.setup (see there).
            return self.tls.context().wrap_socket(conn, server_side=True,
                                                  do_handshake_on_connect=False), addr
        except (OSError, ValueError) as exc:
            conn.close()
            raise OSError(f"TLS wrap failed: {exc}") from None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes, wrong client certificates, timeouts and hang-ups are routine on a
        # network and may come by the thousand: one debug line each, never a traceback on
        # stderr. Anything else is a bug and is logged with its traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ssl.SSLError):
            log.debug("connection from %s ended: %s: %s", client_address[0],
                      type(exc).__name__, exc)
        else:
            log.error("error serving %s", client_address[0], exc_info=True)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """ThreadingHTTPServer in a daemon thread; `stop()` closes the socket."""

    def __init__(self, host: str, port: int, store: Store,
                 authorize: Authorizer | None = None, tls: TLSProvider | None = None,
                 headers: HeadersProvider | None = None,
                 telemetry_path: str = "/metrics") -> None:
        server_class = _IPv6Server if ":" in host else _Server
        self.httpd = server_class((host, port), make_handler(store, authorize, tls, headers,
                                                             telemetry_path))
        self.httpd.tls = tls
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
