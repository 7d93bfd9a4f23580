"""What each path answers: the telemetry path here, the other pages in exporter.web.pages.

A scrape only copies the bytes the last poll rendered (content negotiation picks OpenMetrics or
text 0.0.4, gzip or not), so it never touches the database and never renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.handoff import Store
from exporter.web.http1 import Request
from exporter.web.negotiation import choose
from exporter.web.pages import page as other_page

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
    found = other_page(path, page.status, telemetry_path)
    if found is not None:
        return Response(*found)
    return Response(404, TEXT, b"not found\n")
