"""The small pages beside the metrics: the landing page, liveness and readiness.

- `/healthz` (and `/-/healthy`, Prometheus' spelling) is **liveness**: 200 while the process
  serves, whatever the database does; restarting the exporter would not bring the database
  back, and `cj_health_up` already reports the outage. Its JSON says honestly how things are:
  `status` is `ok`, `degraded` (the last poll failed, or none succeeded yet) or `stale`
  (no successful poll for `stale_after` intervals: per-batch series are withdrawn).
- `/-/ready` is **readiness**: 200 while the exporter has a snapshot that is not
  stale, 503 before the first good poll and while stale. The poller's watchdog republishes the
  page within a second of the snapshot turning stale, so a poll that hangs cannot leave it
  saying ready.
- `/` links to both and to the metrics, with the version and the poll status in words.

Route table: `page()`; exporter.web.server serves what it returns.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from exporter import PROG, version

HTML = "text/html; charset=utf-8"
JSON = "application/json"
LIVENESS_PATHS = ("/healthz", "/-/healthy")
READINESS_PATHS = ("/-/ready",)


def page(path: str, status: Mapping[str, Any],
         telemetry_path: str) -> tuple[int, str, bytes] | None:
    """(HTTP status, content type, body) of a page, or None for a path we do not serve."""
    if path == "/":
        return 200, HTML, landing_page(status, telemetry_path)
    if path in LIVENESS_PATHS:
        return 200, JSON, healthz(status)
    if path in READINESS_PATHS:
        ready = is_ready(status)
        body = json.dumps({"ready": ready, "status": health(status)}).encode()
        return (200 if ready else 503), JSON, body
    return None


def is_stale(status: Mapping[str, Any]) -> bool:
    """As the last page says: the poller's watchdog republishes the moment the snapshot turns
    stale (monotonic clock), so no wall-clock arithmetic here, whose steps would hide or invent
    staleness."""
    return bool(status.get("stale"))


def health(status: Mapping[str, Any]) -> str:
    if is_stale(status):
        return "stale"
    return "ok" if status.get("up") else "degraded"


def is_ready(status: Mapping[str, Any]) -> bool:
    return status.get("last_success") is not None and not is_stale(status)


def healthz(status: Mapping[str, Any]) -> bytes:
    return json.dumps({**status, "status": health(status),
                       "stale": is_stale(status), "version": version()}).encode()


def _words(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    interval = status.get("poll_interval_seconds")
    return [
        ("status", health(status)),
        ("last poll", "succeeded" if status.get("up") else "failed or not done yet"),
        ("snapshot", "stale: per-batch series withdrawn" if is_stale(status)
         else "fresh" if status.get("last_success") is not None else "none yet"),
        ("last success", status.get("last_success") or "never"),
        ("last error", status.get("last_error") or "none"),
        ("exported batches", str(status.get("exported_batches", 0))),
        ("poll interval", f"{interval:g}s" if isinstance(interval, int | float) else "-"),
        ("version", version()),
    ]


def landing_page(status: Mapping[str, Any], telemetry_path: str = "/metrics") -> bytes:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in _words(status))
    metrics = html.escape(telemetry_path, quote=True)
    return (
        f"<!doctype html><html><head><title>{PROG}</title></head><body>"
        f"<h1>{PROG} {html.escape(version())}</h1>"
        "<p>Health of Comparative Judgement batches.</p>"
        f'<ul><li><a href="{metrics}">Metrics</a></li>'
        '<li><a href="/healthz">Liveness</a> (200 while the process serves)</li>'
        '<li><a href="/-/ready">Readiness</a> (503 while the snapshot is stale)</li></ul>'
        f"<table>{rows}</table></body></html>"
    ).encode()
