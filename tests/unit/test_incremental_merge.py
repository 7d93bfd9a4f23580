"""The incremental poll's bookkeeping without a database: merging re-read rows into the kept ones,
assembling the same Snapshot a full read gives, and rendering each body variant once."""

from __future__ import annotations

import gzip
import re
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.collector import SelfStats, SnapshotCollector, render
from exporter.handoff import VARIANTS, Rendered
from exporter.poll.changes import Mark
from exporter.poll.incremental import Kept
from exporter.poll.ledger import Ledger
from exporter.poll.snapshot import BatchRow, OutboxFacts, Snapshot, assemble, parse_row
from tests.support.rows import NOW as ROWS_NOW
from tests.support.rows import view_row

NOW = 1_800_000_000.0
OUTBOX = OutboxFacts(unpublished_events=2, failed_events=1, oldest_unpublished_age_seconds=30.0,
                     undated_unpublished_events=0)
BAD = "ValueError: timestamp is inf"  # why a kept row did not parse
MARK = Mark(at=datetime.fromtimestamp(NOW, UTC), xmin=100, xmax=105)
LATER = Mark(at=datetime.fromtimestamp(NOW + 15, UTC), xmin=110, xmax=120)


def row(bid: int, *, state: str = "WAITING_CALLBACKS", status: str = "PERFORMING_COMPARISONS",
        terminal: bool = False, age: float = 60.0, problems: frozenset[str] = frozenset(),
        bos: str | None = None, charges: int = 0, unreadable: int = 0,
        overcharged: float = 0.0) -> BatchRow:
    """A parsed view row (tests.support.rows, as the poll reads it, shifted to this NOW)."""
    parsed = parse_row(view_row(
        bid, problems=problems, idle=age - (NOW - ROWS_NOW),
        bos_batch_id=bos or f"bos-{bid}", cj_state=state, upload_status=status,
        is_terminal=terminal, charge_events=charges, resource_events=charges,
        overcharged_quantity=overcharged, unreadable_essay_documents=unreadable))
    assert isinstance(parsed, BatchRow), parsed
    return parsed


def snapshot_of(rows: list[BatchRow], malformed: dict[str, str] | None = None,
                max_batches: int = 100) -> Snapshot:
    return assemble(rows, malformed or {}, OUTBOX, now=NOW, duration=0.0, recent_window=3600,
                    max_batches=max_batches)


def facts(s: Snapshot) -> Snapshot:
    """A snapshot without the poll's own timing, for comparing two polls' results."""
    return replace(s, taken_at=0.0, duration_seconds=0.0, full_poll=True, batches_read=0)


def kept_snapshot(kept: Kept, now: float = NOW, max_batches: int = 100) -> Snapshot:
    return kept.ledger.snapshot(OUTBOX, kept.malformed_reasons(), now=now, duration=0.0,
                                recent_window=3600, max_batches=max_batches)


def test_merge_replaces_changed_rows_adds_new_ones_and_drops_unwatched() -> None:
    kept = Kept({1: row(1), 2: row(2), 3: row(3)}.items(), MARK)
    changed = row(2, state="SCORING", problems=frozenset({"stuck_scoring"}))
    kept.apply(watched={1, 2, 4}, read={2: changed, 4: row(4)}, asked={2, 4}, mark=LATER)
    assert kept.ledger.rows == {1: row(1), 2: changed, 4: row(4)}
    assert kept.mark == LATER
    full = snapshot_of([row(1), changed, row(4)])
    assert facts(kept_snapshot(kept)) == facts(full)


def test_malformed_rows_are_counted_while_kept_and_uncounted_once_they_parse() -> None:
    kept = Kept([(1, row(1)), (2, BAD)], MARK)
    kept.apply(watched={1, 2, 3}, read={3: BAD}, asked={3}, mark=LATER)
    assert kept.malformed == {2: BAD, 3: BAD}
    assert dict(kept_snapshot(kept).malformed) == {"row 2": BAD, "row 3": BAD}
    kept.apply(watched={1, 2, 3}, read={2: row(2)}, asked={2}, mark=LATER)
    assert kept.malformed == {3: BAD}
    kept.apply(watched={1, 2}, read={}, asked=set(), mark=LATER)  # 3 left the watched set
    assert kept.malformed == {} and kept.ids() == {1, 2}
    assert kept_snapshot(kept).malformed_rows == 0


def test_a_batch_asked_for_without_a_row_is_dropped() -> None:
    kept = Kept([(1, row(1)), (2, BAD)], MARK)
    kept.apply(watched={1, 2}, read={}, asked={1, 2}, mark=LATER)
    assert kept.ids() == set()


def test_the_recent_window_is_applied_at_assembly_not_at_read() -> None:
    """A finished healthy batch leaves the exported set as time passes, with no re-read."""
    done = row(7, state="COMPLETED", status="COMPLETE_STABLE", terminal=True, age=3500)
    kept = Kept([(7, done)], MARK)
    now_in, later = kept_snapshot(kept), kept_snapshot(kept, now=NOW + 200)
    assert [b.cj_batch_id for b in now_in.batches] == [7]
    assert later.batches == () and later.watched == 1  # still watched, no longer exported
    for snap, at in ((now_in, NOW), (later, NOW + 200)):
        assert facts(snap) == facts(assemble([done], {}, OUTBOX, now=at, duration=0,
                                             recent_window=3600, max_batches=100))


def test_assembly_orders_problems_first_and_caps() -> None:
    rows = [row(1, age=10), row(2, age=5, problems=frozenset({"wedged"})),
            row(3, state="COMPLETED", status="COMPLETE_STABLE", terminal=True, age=1)]
    snap = snapshot_of(rows, max_batches=2)
    assert [b.cj_batch_id for b in snap.batches] == [2, 1]
    assert snap.dropped == 1
    assert snap.problem_counts["wedged"] == 1 and snap.problem_counts["stuck_scoring"] == 0


def test_charges_beyond_one_count_per_run_even_when_runs_share_a_bos_batch() -> None:
    charge = frozenset({"duplicate_charge"})
    rows = [row(1, bos="b", charges=3, problems=charge, overcharged=20.0),
            row(2, bos="b", charges=1), row(3, bos="c", charges=2, problems=charge,
                                            overcharged=10.0)]
    snap = snapshot_of(rows)
    assert snap.duplicate_events["resource"] == 3 and snap.overcharged_quantity == 30.0


def test_unreadable_documents_are_summed_and_exported_however_old() -> None:
    old = row(4, state="COMPLETED", status="COMPLETE_STABLE", terminal=True, age=7200,
              unreadable=2)
    kept = Kept([(4, old), (5, row(5, unreadable=1))], MARK)
    snap = kept_snapshot(kept)
    assert [b.cj_batch_id for b in snap.batches] == [5, 4]  # in flight first, then finished
    assert snap.unreadable_documents["essay_metadata"] == 3
    assert facts(snap) == facts(snapshot_of([old, row(5, unreadable=1)]))


ROWS = st.builds(
    row, st.integers(1, 12),
    state=st.sampled_from(["WAITING_CALLBACKS", "SCORING", "COMPLETED"]),
    status=st.sampled_from(["PERFORMING_COMPARISONS", "COMPLETE_STABLE"]),
    terminal=st.booleans(), age=st.sampled_from([10.0, 3000.0, 3599.0, 3601.0, 7200.0]),
    problems=st.frozensets(st.sampled_from(["wedged", "duplicate_charge", "anchor_mismatch"])),
    bos=st.sampled_from(["b1", "b2", "b3"]), charges=st.integers(0, 4),
    unreadable=st.sampled_from([0, 0, 1, 3]), overcharged=st.sampled_from([0.0, 5.0, 40.0]))
STEPS = st.lists(st.one_of(ROWS, st.integers(1, 12)), max_size=60)  # put a row / remove an id


@settings(max_examples=300, derandomize=True, database=None)
@given(steps=STEPS, cap=st.integers(1, 8))
def test_the_ledger_gives_what_assembling_its_rows_gives(steps: list[BatchRow | int],
                                                        cap: int) -> None:
    ledger = Ledger()
    for step in steps:
        if isinstance(step, int):
            ledger.remove(step)
        else:
            ledger.put(step)
        snap = ledger.snapshot(OUTBOX, {}, now=NOW, duration=0, recent_window=3600,
                               max_batches=cap)
        assert facts(snap) == facts(snapshot_of(list(ledger.rows.values()), max_batches=cap))


# --- rendering ---------------------------------------------------------------------------------

def counting() -> tuple[Rendered, dict[str, int]]:
    calls = {"text": 0, "openmetrics": 0}

    def make(kind: str) -> bytes:
        calls[kind] += 1
        time.sleep(0.05)  # long enough for the threads below to arrive together
        return f"# {kind}\n".encode() * 50

    return Rendered(lambda: make("text"), lambda: make("openmetrics")), calls


def test_each_variant_is_rendered_on_first_use_and_only_once() -> None:
    rendered, calls = counting()
    assert rendered.served() == () and rendered.renders == 0
    body = rendered.openmetrics_gzip
    assert gzip.decompress(body) == rendered.openmetrics
    assert calls == {"text": 0, "openmetrics": 1}  # the text variants were never made
    assert rendered.served() == ("openmetrics", "openmetrics_gzip")
    for _ in range(3):
        assert rendered.openmetrics_gzip is body
    assert rendered.renders == 2


def test_concurrent_first_requests_render_once() -> None:
    rendered, calls = counting()
    bodies: list[bytes] = []
    lock = threading.Lock()

    def scrape(variant: str) -> None:
        body = rendered.body(variant)
        with lock:
            bodies.append(body)

    threads = [threading.Thread(target=scrape, args=(v,)) for v in VARIANTS * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == {"text": 1, "openmetrics": 1}
    assert rendered.renders == 4 and len(bodies) == 16


def test_all_variants_of_one_page_show_the_same_snapshot() -> None:
    extra_calls = []

    def extra() -> list[object]:
        extra_calls.append(1)
        return []

    stats = SelfStats(up=True, stale=False, last_success=NOW, last_duration=0.1, polls=1,
                      errors={}, skipped=0)
    rendered = render(SnapshotCollector(snapshot_of([row(1), row(2)]), stats, extra))  # type: ignore[arg-type]
    text_series = [line for line in rendered.text.decode().splitlines()
                   if line.startswith("cj_batch_progress_ratio{")]
    om_series = [line for line in rendered.openmetrics.decode().splitlines()
                 if line.startswith("cj_batch_progress_ratio{")]
    assert len(text_series) == 2 and text_series == om_series
    assert extra_calls == [1]  # read once, at publication, not per variant


def test_both_formats_are_rendered_as_the_default_escaping_would_render_them() -> None:
    """The collector renders without per-character name escaping (faster); every
    declared family and label name is a legacy name, so the bytes are the same."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics import exposition

    from exporter.collector import idle_remediation_families
    from exporter.vocabulary import FAMILIES

    stats = SelfStats(up=True, stale=False, last_success=NOW, last_duration=0.1, polls=1,
                      errors={"query": 1}, skipped=0, full_polls=1, last_full_poll=NOW,
                      unsignalled_bound=315.0)
    collector = SnapshotCollector(snapshot_of([row(1), row(2, problems=frozenset({"wedged"}))]),
                                  stats, idle_remediation_families)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    rendered = render(collector, standard=False)  # process_* values move between two renders
    assert rendered.openmetrics == exposition.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert rendered.text == generate_latest(registry)
    legacy = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    assert all(legacy.match(f.name) and all(legacy.match(label) for label in f.labels)
               for f in FAMILIES.values())
