"""The incremental poll: per-batch facts kept between polls, re-read only where rows changed.

A full poll reads every watched batch's row of cj_batch_health (exporter.poll.query: the watched
ids, then their rows a chunk of ids at a time) and keeps them, parsed, by batch id. The
polls in between read, in one read-only snapshot:

1. the watched ids (index scans only: membership changes with time alone, as the lookback
   window moves, so it is asked every poll),
2. the batches whose rows changed since the last poll's Mark (exporter.poll.changes),
3. the rows of the changed and of the newly watched batches, and the outbox facts,

then drop the batches no longer watched, merge the rows read into the kept ones and read the
Snapshot off them (exporter.poll.ledger keeps the aggregates and the export order up to date
row by row, so this costs the exporter what changed, not the watched set). The facts that
change with time alone are not read again: the exported set's recent window is applied at
assembly to the kept last-activity times, and the watched set is asked every poll. So after
each poll the snapshot is the one a full poll would give, except for changes no column signals
(exporter.poll.changes), which the next full poll finds: every `full_poll_interval_seconds`, so
within `Settings.unsignalled_bound_seconds` (exported as
cj_health_unsignalled_change_bound_seconds; docs/performance.md).

A failed poll changes nothing kept: the next one reads from the same Mark (or, when the kept
rows were dropped at the start of a failed full poll, is a full poll again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine

from exporter.config import Settings
from exporter.db import read_only_snapshot
from exporter.poll import changes, query
from exporter.poll.ledger import Ledger
from exporter.poll.snapshot import (
    BatchRow,
    OutboxFacts,
    Snapshot,
    malformed_key,
    parse_outbox,
    parse_row,
)

log = logging.getLogger(__name__)


class Kept:
    """The parsed rows of the watched batches as of `mark`, in a Ledger; the ids whose row did
    not parse are kept apart with why (counted as malformed until a re-read parses them)."""

    def __init__(self, rows: Iterable[tuple[int, BatchRow | str]], mark: changes.Mark) -> None:
        self.ledger = Ledger()
        self.malformed: dict[int, str] = {}
        self.mark = mark
        for bid, row in rows:
            self._put(bid, row)

    def ids(self) -> set[int]:
        return self.ledger.rows.keys() | self.malformed

    def apply(self, watched: set[int], read: Mapping[int, BatchRow | str], asked: set[int],
              mark: changes.Mark) -> None:
        """Merge one incremental poll: rows read replace kept ones, unwatched ones go."""
        for bid in [b for b in self.ids() if b not in watched]:
            self._drop(bid)
        for bid in asked - read.keys():  # asked for, but it has no row any more
            self._drop(bid)
        for bid, row in read.items():
            self._put(bid, row)
        self.mark = mark

    def _put(self, bid: int, row: BatchRow | str) -> None:
        self._drop(bid)
        if isinstance(row, BatchRow):
            self.ledger.put(row)
        else:
            self.malformed[bid] = row

    def _drop(self, bid: int) -> None:
        self.ledger.remove(bid)
        self.malformed.pop(bid, None)

    def malformed_reasons(self) -> dict[str, str]:
        return {malformed_key(bid): why for bid, why in sorted(self.malformed.items())}


class IncrementalPoll:
    """Polls for one Poller; not thread-safe (the scheduler runs one poll at a time)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kept: Kept | None = None
        self._last_full_started: float | None = None  # monotonic
        # Unix time (the database's clock) of the last successful full poll
        self.last_full_at: float | None = None
        self.full_polls = 0
        self._missing: list[str] = []
        self._full_requested = False

    def request_full(self) -> None:
        """Make the next poll a full one (whatever full_poll_interval_seconds says)."""
        self._full_requested = True

    def poll(self, engine: Engine) -> Snapshot:
        started = time.monotonic()
        s = self.settings
        with read_only_snapshot(engine, s.statement_timeout_seconds,
                                s.lock_timeout_seconds) as conn:
            mark = changes.mark(conn)
            if self._full_due(started):
                self._full_requested = False
                return self._full(conn, mark, started)
            assert self._kept is not None
            try:
                watched = query.watched_ids(conn, s.lookback_seconds)
                asked = self._changed(conn, mark, watched)
                read = dict(_parse(query.rows_by_id(conn, asked))) if asked else {}
                outbox = parse_outbox(query.outbox_facts(conn))
            except Exception:
                # Whatever failed (a revoked grant, a dropped index, a timeout), the next poll
                # is full: it checks what incremental polls need and reads everything again.
                self._full_requested = True
                raise
        self._kept.apply(watched, read, asked, mark)
        return self._assemble(self._kept, outbox, started, full=False, read=len(asked))

    def _changed(self, conn: Connection, mark: changes.Mark, watched: set[int]) -> set[int]:
        """The watched batches to read again: changed ones, the other runs of their BOS
        batches, and the newly watched."""
        assert self._kept is not None
        kept = self._kept
        touched = changes.touched(conn, kept.mark, mark, self.settings.commit_lag_seconds)
        named = touched.ids()
        bos = set(touched.aggregates) | {kept.ledger.rows[b].bos_batch_id for b in named
                                          if b in kept.ledger.rows}
        outside = named - kept.ledger.rows.keys()  # not kept: its BOS batch is not known here
        if outside:
            bos |= changes.bos_of(conn, outside)
        runs = kept.ledger.runs_of(bos)
        return ((named | runs) & watched) | (watched - kept.ids())

    def _full_due(self, started: float) -> bool:
        if self._kept is None or self._missing or self._last_full_started is None \
                or self._full_requested:
            return True
        # A tick that comes a little early still counts, so full polls keep their interval
        # instead of slipping by one poll interval each time.
        slack = self.settings.poll_interval_seconds / 2
        return started - self._last_full_started >= \
            self.settings.full_poll_interval_seconds - slack

    def _full(self, conn: Connection, mark: changes.Mark, started: float) -> Snapshot:
        self._kept = None  # never two copies at once; a failure makes the next poll full too
        missing = changes.missing(conn)
        if missing != self._missing and missing:
            log.warning("incremental polls need the indexes of sql/views/indexes.sql"
                        " (install-view --indexes) and the grants of sql/roles.sql; missing"
                        " %s: every poll is a full poll", ", ".join(missing))
        self._missing = missing
        # The watched ids, then their rows a chunk at a time: same snapshot, bounded memory.
        watched = query.watched_ids(conn, self.settings.lookback_seconds)
        kept = Kept(_parse(query.rows_by_id(conn, watched)), mark)
        outbox = parse_outbox(query.outbox_facts(conn))
        self._kept = kept
        self._last_full_started = started
        self.last_full_at = mark.at.timestamp()
        self.full_polls += 1
        return self._assemble(kept, outbox, started, full=True, read=len(kept.ids()))

    def _assemble(self, kept: Kept, outbox: OutboxFacts, started: float, *, full: bool,
                  read: int) -> Snapshot:
        s = self.settings
        # The database's now(): the recent window is cut against the database's own stamps,
        # so a step of the exporter host's clock moves no batch in or out of it.
        snap = kept.ledger.snapshot(outbox, kept.malformed_reasons(), now=kept.mark.at.timestamp(),
                                    duration=time.monotonic() - started,
                                    recent_window=s.recent_window_seconds,
                                    max_batches=s.max_batches)
        return replace(snap, full_poll=full, batches_read=read)

    @property
    def incremental(self) -> bool:
        """Whether polls between full ones read only changes (False: an index or grant is
        missing, or full_poll_interval_seconds says every poll is full)."""
        return not self._missing and \
            self.settings.full_poll_interval_seconds > self.settings.poll_interval_seconds


def _parse(rows: Iterable[Mapping[Any, Any]]) -> Iterator[tuple[int, BatchRow | str]]:
    for row in rows:
        parsed = parse_row(row)
        # The view's cj_batch_id is cj_batch_uploads' primary key, so a row without a usable
        # id cannot come back; one that does not parse is kept as why (counted as malformed).
        bid = parsed.cj_batch_id if isinstance(parsed, BatchRow) else int(row["cj_batch_id"])
        yield bid, parsed
