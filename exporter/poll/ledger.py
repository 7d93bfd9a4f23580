"""The kept rows of the watched batches with their aggregates and export order, kept up to date
row by row, so an incremental poll costs the exporter in proportion to what changed.

`snapshot()` gives what exporter.poll.snapshot.assemble gives for the same rows (the property
test in tests/db/test_incremental_property.py holds the two to it): the aggregates are running
sums adjusted as rows come and go, and the exported set is read off two sorted key lists, the
batches always exported (problems or unfinished) and the finished healthy ones, exported while
recent. Time alone moves a finished batch out of the recent window: that is a cut in its sorted
list at assembly, not a re-read.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Mapping

from exporter.poll.snapshot import BatchRow, Key, OutboxFacts, Snapshot, export_order
from exporter.vocabulary import PROBLEM_COLUMNS, UNREADABLE_DOCUMENT_COLUMNS


class SortedKeys:
    """A set of keys read in order; changes are batched and merged at the next read (a sort
    of an almost sorted list is linear)."""

    def __init__(self) -> None:
        self._sorted: list[Key] = []
        self._added: list[Key] = []
        self._removed: set[Key] = set()

    def add(self, key: Key) -> None:
        if key in self._removed:
            self._removed.discard(key)
        else:
            self._added.append(key)

    def remove(self, key: Key) -> None:
        self._removed.add(key)

    def ordered(self) -> list[Key]:
        if self._removed:
            gone = self._removed
            self._sorted = [k for k in self._sorted if k not in gone]
            self._added = [k for k in self._added if k not in gone]
            self._removed = set()
        if self._added:
            self._sorted.extend(self._added)
            self._sorted.sort()
            self._added = []
        return self._sorted


class Ledger:
    def __init__(self) -> None:
        self.rows: dict[int, BatchRow] = {}
        self._by_state: Counter[tuple[str, str]] = Counter()
        self._problems = dict.fromkeys(PROBLEM_COLUMNS, 0)
        self._unreadable = dict.fromkeys(UNREADABLE_DOCUMENT_COLUMNS, 0)
        self._completed = 0
        self._result = 0
        self._resource = 0  # charges beyond one per run (data.processing_id names the run)
        # integral quantities in practice: a running float sum of them stays exact
        self._overcharged = 0.0
        self._exported_always = SortedKeys()  # flagged (problems, unreadable) or unfinished
        self._while_recent = SortedKeys()  # finished and not flagged
        # bos_batch_id -> its kept run, or runs (almost every BOS batch has one)
        self._runs: dict[str, int | frozenset[int]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def put(self, row: BatchRow) -> None:
        self.remove(row.cj_batch_id)
        self.rows[row.cj_batch_id] = row
        self._count(row, 1)
        self._run(row.bos_batch_id, row.cj_batch_id, True)

    def remove(self, bid: int) -> None:
        row = self.rows.pop(bid, None)
        if row is not None:
            self._count(row, -1)
            self._run(row.bos_batch_id, bid, False)

    def runs_of(self, bos: set[str]) -> set[int]:
        """The kept runs of these BOS batches."""
        out: set[int] = set()
        for key in bos:
            runs = self._runs.get(key)
            if isinstance(runs, int):
                out.add(runs)
            elif runs:
                out |= runs
        return out

    def _run(self, bos: str, bid: int, present: bool) -> None:
        runs = self._runs.get(bos)
        ids = {runs} if isinstance(runs, int) else set(runs or ())
        (ids.add if present else ids.discard)(bid)
        if not ids:
            self._runs.pop(bos, None)
        else:
            self._runs[bos] = next(iter(ids)) if len(ids) == 1 else frozenset(ids)

    def _count(self, b: BatchRow, sign: int) -> None:
        state = (b.cj_state, b.upload_status)
        self._by_state[state] += sign
        if not self._by_state[state]:
            del self._by_state[state]  # a (state, status) with no batch has no series
        for p in b.problems:
            self._problems[p] += sign
        for d, n in b.unreadable.items():
            self._unreadable[d] += sign * n
        self._completed += sign * max(b.completion_events - 1, 0)
        self._result += sign * max(b.result_events - 1, 0)
        self._resource += sign * max(b.charge_events - 1, 0)
        self._overcharged += sign * b.overcharged_quantity
        keys = self._while_recent if b.is_terminal and not b.flagged else self._exported_always
        (keys.add if sign > 0 else keys.remove)(export_order(b))

    def snapshot(self, outbox: OutboxFacts, malformed: Mapping[str, str], *, now: float,
                 duration: float, recent_window: float, max_batches: int) -> Snapshot:
        always = self._exported_always.ordered()
        finished = self._while_recent.ordered()
        # Finished keys are (True, True, True, -last_activity, id): the recent ones come first.
        recent = bisect.bisect_right(finished, (True, True, True, recent_window - now, math.inf))
        exported = itertools.islice(itertools.chain(always, finished[:recent]), max_batches)
        return Snapshot(
            taken_at=now,
            duration_seconds=duration,
            batches=tuple(self.rows[k[-1]] for k in exported),
            watched=len(self.rows),
            dropped=max(len(always) + recent - max_batches, 0),
            malformed_rows=len(malformed),
            malformed=malformed,
            unreadable_documents=dict(self._unreadable),
            by_state=Counter(self._by_state),
            problem_counts=dict(self._problems),
            duplicate_events={"completed": self._completed, "result": self._result,
                              "resource": self._resource},
            overcharged_quantity=self._overcharged,
            outbox=outbox,
        )
