"""The hand-off between the poll and HTTP: what one poll publishes, and where scrapes read it.

The poll side (exporter.poll.scheduler) renders each snapshot once and publishes a Page; the
HTTP side (exporter.web.server) only reads the current Page and copies its bytes. Neither side
imports the other: both import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rendered:
    """One snapshot's metrics in every encoding /metrics serves."""

    text: bytes
    text_gzip: bytes
    openmetrics: bytes
    openmetrics_gzip: bytes


@dataclass(frozen=True)
class Page:
    """What the last poll published: the metrics bytes and a status for / and /healthz."""

    metrics: Rendered
    status: dict[str, Any]


class Store:
    """Holds the current Page; publishing swaps one reference, so readers never see a mix."""

    def __init__(self, first: Page) -> None:
        self._page = first

    def publish(self, page: Page) -> None:
        self._page = page

    @property
    def page(self) -> Page:
        return self._page
