"""The hand-off between the poll and HTTP: what one poll publishes, and where scrapes read it.

The poll side (exporter.poll.scheduler) publishes a Page per snapshot; the HTTP side
(exporter.web.server) only reads the current Page and copies its bytes. Neither side imports the
other: both import this module.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VARIANTS = ("text", "text_gzip", "openmetrics", "openmetrics_gzip")
Body = bytes | Callable[[], bytes]


class Rendered:
    """One snapshot's metrics in every encoding /metrics serves, each rendered when first asked
    for and then kept for the life of the snapshot.

    Prometheus asks for one variant, so rendering all four every poll spent most of the
    exporter's CPU on bodies nobody fetched (docs/performance.md). A variant is rendered at most
    once: concurrent first requests wait on its lock and get the same bytes. Rendering reads only
    the immutable snapshot the page was made from, never the database.
    """

    def __init__(self, text: Body, openmetrics: Body, text_gzip: Body | None = None,
                 openmetrics_gzip: Body | None = None) -> None:
        """Each body is given, or how to render it; a gzip body defaults to its base's."""
        given = {"text": text, "openmetrics": openmetrics, "text_gzip": text_gzip,
                 "openmetrics_gzip": openmetrics_gzip}
        self._bodies: dict[str, bytes] = {v: b for v, b in given.items() if isinstance(b, bytes)}
        self._make: dict[str, Callable[[], bytes]] = {
            "text_gzip": lambda: gzip.compress(self.text, 6),
            "openmetrics_gzip": lambda: gzip.compress(self.openmetrics, 6),
        }
        self._make.update({v: b for v, b in given.items() if callable(b)})
        self._locks = {variant: threading.Lock() for variant in VARIANTS}
        self._count_lock = threading.Lock()
        self.renders = 0  # bodies made (at most one per variant; tests hold it to that)

    def body(self, variant: str) -> bytes:
        done = self._bodies.get(variant)
        if done is not None:
            return done
        with self._locks[variant]:  # a gzip variant takes its base's lock inside: no cycle
            done = self._bodies.get(variant)
            if done is None:
                done = self._bodies[variant] = self._make[variant]()
                with self._count_lock:
                    self.renders += 1
            return done

    def served(self) -> tuple[str, ...]:
        """The variants made (or given) so far."""
        return tuple(v for v in VARIANTS if v in self._bodies)

    @property
    def text(self) -> bytes:
        return self.body("text")

    @property
    def text_gzip(self) -> bytes:
        return self.body("text_gzip")

    @property
    def openmetrics(self) -> bytes:
        return self.body("openmetrics")

    @property
    def openmetrics_gzip(self) -> bytes:
        return self.body("openmetrics_gzip")


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
