"""exporter.web.negotiation.choose: which pre-rendered bytes a scrape gets for its Accept and
Accept-Encoding headers. The bytes are copied as rendered, never re-rendered. The same over real
HTTP is in tests/db/test_metrics.py."""

from __future__ import annotations

import pytest

from exporter.handoff import Rendered
from exporter.web.negotiation import OPENMETRICS_TYPE, TEXT_TYPE, choose

RENDERED = Rendered(text=b"text", text_gzip=b"text.gz", openmetrics=b"om",
                    openmetrics_gzip=b"om.gz")
# The shape of Prometheus's default Accept header: OpenMetrics first, then text, q-weighted.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


@pytest.mark.parametrize(("accept", "encoding", "body", "content_type", "gzipped"), [
    ("", "", b"text", TEXT_TYPE, False),  # curl: text format
    ("*/*", "", b"text", TEXT_TYPE, False),
    ("text/plain;version=0.0.4", "", b"text", TEXT_TYPE, False),
    ("text/plain", "gzip", b"text.gz", TEXT_TYPE, True),
    (PROMETHEUS_ACCEPT, "gzip", b"om.gz", OPENMETRICS_TYPE, True),
    (PROMETHEUS_ACCEPT, "", b"om", OPENMETRICS_TYPE, False),
    ("application/openmetrics-text;version=1.0.0,*/*;q=0.1", "gzip, deflate", b"om.gz",
     OPENMETRICS_TYPE, True),
    ("application/openmetrics-text; version=0.0.1", "identity", b"om", OPENMETRICS_TYPE, False),
    ("", "deflate, br", b"text", TEXT_TYPE, False),  # only gzip is offered
    ("", "br, gzip;q=0.8", b"text.gz", TEXT_TYPE, True),  # gzip anywhere in the list
    ("", " gzip ", b"text.gz", TEXT_TYPE, True),
    ("", "x-gzip", b"text", TEXT_TYPE, False),  # not the gzip token
    ("", "gzipped", b"text", TEXT_TYPE, False),
])
def test_choose(accept: str, encoding: str, body: bytes, content_type: str,
                gzipped: bool) -> None:
    assert choose(RENDERED, accept, encoding) == (body, content_type, gzipped)


def test_the_chosen_body_is_the_rendered_object_itself() -> None:
    body, _, _ = choose(RENDERED, PROMETHEUS_ACCEPT, "gzip")
    assert body is RENDERED.openmetrics_gzip  # copied as rendered once per poll
