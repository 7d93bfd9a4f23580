"""Rate-limited warnings about what a poll found wrong in the data, not in the poll itself.

A fault in the data (a view row that does not parse, a document PostgreSQL cannot read) is
there on every poll until someone edits the row: logging it every poll (every 15 s, or 0.5 s
in tests) buries the log. The same rule as a failing poll (exporter.poll.scheduler): one
warning when a fault first appears, a reminder every `remind_every` polls while any lasts, and
one line when they are all gone. The exact counts are on /metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("exporter.poll")

_LISTED = 5  # faults named in one warning; the rest are counted


class FaultLog:
    """Warnings about one kind of fault, keyed by what is at fault (e.g. a batch id)."""

    def __init__(self, prefix: str, noun: str, remind_every: int = 20) -> None:
        self.prefix = prefix  # starts a new fault's warning: "<prefix> <key>: <description>"
        self.noun = noun  # plural, for the reminder and the all-clear
        self.remind_every = remind_every
        self._known: frozenset[str] = frozenset()
        self._polls_with_faults = 0

    def observe(self, faults: Mapping[str, str]) -> None:
        """One poll's faults: key -> one-line description."""
        new = [key for key in faults if key not in self._known]
        if faults:
            self._polls_with_faults += 1
        if new:
            shown = "; ".join(f"{key}: {faults[key]}" for key in new[:_LISTED])
            more = f" (and {len(new) - _LISTED} more)" if len(new) > _LISTED else ""
            log.warning("%s %s%s", self.prefix, shown, more)
        elif faults and self._polls_with_faults % self.remind_every == 0:
            log.warning("still %d %s (%s)", len(faults), self.noun,
                        ", ".join(list(faults)[:_LISTED]))
        elif not faults and self._known:
            log.info("no %s any more", self.noun)
            self._polls_with_faults = 0
        self._known = frozenset(faults)
