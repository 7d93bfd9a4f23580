"""The small pages beside /metrics: the landing page (/) and the liveness probe (/healthz)."""

from __future__ import annotations

import html
import json
from typing import Any


def landing_page(status: dict[str, Any]) -> bytes:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in status.items())
    return (
        "<!doctype html><html><head><title>cj-health-exporter</title></head><body>"
        "<h1>cj-health-exporter</h1><p>Health of Comparative Judgement batches.</p>"
        '<ul><li><a href="/metrics">Metrics</a></li><li><a href="/healthz">Health</a></li></ul>'
        f"<table>{rows}</table></body></html>"
    ).encode()


def healthz(status: dict[str, Any]) -> bytes:
    """Liveness only: a database outage is reported by cj_health_up, not by failing this probe
    (restarting the exporter would not bring the database back)."""
    return json.dumps({"status": "ok", **status}).encode()
