"""What each path answers: the telemetry path, the landing page (/) and /healthz.

A scrape only copies the bytes the last poll rendered (content negotiation picks OpenMetrics or
text 0.0.4, gzip or not), so it never touches the database and never renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.errors import OperatorError
from exporter.handoff import Store
from exporter.web.http1 import Request
from exporter.web.negotiation import choose
from exporter.web.pages import healthz, landing_page

READ_METHODS = ("GET", "HEAD")
# Known methods that would change something: 405 (after authentication, so an anonymous
# client learns nothing). Any other method: 501, as http.server and Go answer.
WRITE_METHODS = ("POST", "PUT", "DELETE", "PATCH")
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


def check_telemetry_path(path: str) -> str:
    """--web.telemetry-path: an absolute path that is not one of the other pages."""
    if not path.startswith("/") or path in ("/", "/healthz") or any(c in path for c in "?# "):
        raise OperatorError(f"web.telemetry-path must be a path like /metrics (not / or "
                            f"/healthz, no query), got {path!r}")
    return path


def route(store: Store, request: Request, telemetry_path: str) -> Response:
    """The answer to an authenticated request."""
    if request.method in WRITE_METHODS:
        return Response(405, TEXT, b"method not allowed\n", (("Allow", "GET, HEAD"),),
                        close=True)
    page = store.page
    path = request.path
    if path == telemetry_path:
        body, ctype, gz = choose(page.metrics, request.header("accept"),
                                 request.header("accept-encoding"))
        vary = ("Vary", "Accept, Accept-Encoding")
        return Response(200, ctype, body, (("Content-Encoding", "gzip"), vary) if gz else (vary,))
    if path == "/":
        return Response(200, "text/html; charset=utf-8", landing_page(page.status))
    if path == "/healthz":
        return Response(200, "application/json", healthz(page.status))
    return Response(404, TEXT, b"not found\n")
