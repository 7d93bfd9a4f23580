"""Content negotiation for /metrics: OpenMetrics or text 0.0.4, gzip or not."""

from __future__ import annotations

from exporter.handoff import Rendered

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def choose(rendered: Rendered, accept: str, accept_encoding: str) -> tuple[bytes, str, bool]:
    """Pick body, content type and whether it is gzip-encoded for the request headers."""
    gzip_ok = any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))
    if "application/openmetrics-text" in accept:
        body = rendered.openmetrics_gzip if gzip_ok else rendered.openmetrics
        return body, OPENMETRICS_TYPE, gzip_ok
    return (rendered.text_gzip if gzip_ok else rendered.text), TEXT_TYPE, gzip_ok
