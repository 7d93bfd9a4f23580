"""The CJ service finalizing a batch while the finalizer does (issue 12 item 7).

Service-style writers, a fake outbox relay, and a bounded hammer that counts the events each
batch ends with. The writers do what the service's code does, statement by statement
(upstream's `BatchFinalizer.finalize_scoring`, docs/finalizer.md "The race with the CJ
service"), on their own connections, at moments the caller picks:

- `upstream`: the guard reads the upload status without a lock (a terminal status: stop);
  UPDATE the state row to SCORING and COMMIT; rescore (UPDATE the essays, own transaction);
  UPDATE the upload status in the main transaction, held open; the projections with a plain
  INSERT (own transaction; only when the batch has anchors); the three outbox rows, each
  INSERTed and committed on its own; state COMPLETED and COMMIT of the main transaction. A
  failure on the way rolls the main transaction back, as upstream's session does, leaving
  what was committed before.
- `status_first`: the guard, the upload status committed on its own, the three outbox rows,
  then the state: a writer that touches the state row only after its events.
- `events_only`: the guard, then the three outbox rows, then status and state together:
  events committed from another connection inside the finalizer's transaction, no lock on the
  batch's rows before them (docs/finalizer.md, "The residual window").

The service's rows are what a finalization publishes for the batch (the finalizer's own
dry-run plan, equal to upstream's output by tests/db/test_finalizer_upstream.py), each with a
fresh event id and `metadata.written_by = "service"`, so that the counts can tell who wrote
what. The relay publishes every unpublished row a random 0..relay_max_ms after it first sees
it (upstream's relay: milliseconds when woken, up to its poll interval otherwise).

`python -m tests.support.race URL --tries N --seed S` runs the hammer on the finalizer code
that `exporter` resolves to and prints the records as JSON: tests/db/test_finalizer_race.py
runs it on another git ref's code this way (the baseline).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from exporter.demo.scenarios import GRADES, BatchSpec, Seeder
from exporter.upstream import events as ev
from tests.support.remediation import events_of

MODELS = ("upstream", "status_first", "events_only")
KINDS = ("completed", "result", "resource")
SERVICE = "service"


def _nothing() -> None:
    return None


# --- the batches -------------------------------------------------------------------------------

def wedged_spec(anchored: bool, students: int = 6) -> BatchSpec:
    """Fixture batch 7's kind: every callback in, nobody finalized it, no event yet; the one
    kind both upstream's completion sweeper and the finalizer would finalize."""
    return BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", students=students,
                     anchor_grades=GRADES if anchored else (), finished=False,
                     idle=timedelta(hours=2))


def seed_batches(engine: Engine, anchored: Sequence[bool], rng: random.Random) -> list[int]:
    with engine.begin() as conn:
        seeder = Seeder(conn, rng=random.Random(rng.getrandbits(64)))
        return [seeder.insert_batch(wedged_spec(a)) for a in anchored]


@dataclass(frozen=True)
class Work:
    """What a finalization of the batch writes: the service writes the same."""

    batch_id: int
    rows: tuple[ev.OutboxRow, ...]
    projections: tuple[tuple[str, str], ...]  # (student, grade); empty: no anchors
    scores: tuple[tuple[str, float], ...]


def work_for(engine: Engine, batch_id: int) -> Work:
    """The finalizer's own plan on a read-only snapshot (its dry run)."""
    from exporter.finalizer import events as fin_events
    from exporter.finalizer import refinalize, store

    with engine.connect() as conn, conn.begin():
        batch = store.read_batch(conn, batch_id, lock=False)
        assert not isinstance(batch, str), batch
        plan = refinalize._plan(conn, batch, backfill=False, defaults=fin_events.DEFAULTS)
    assert isinstance(plan, refinalize.Plan), plan
    projected = tuple((s.els_essay_id, s.primary_grade)
                      for s in (plan.projection.students if plan.projection else ()))
    return Work(batch_id, tuple(plan.rows), projected,
                tuple(sorted((e, float(v)) for e, v in plan.fit.scores.items())))


# --- the service --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gates:
    """Sync points for deterministic scenarios: right after the guard passed (the status was
    not terminal), and right before the first outbox INSERT."""

    after_guard: Callable[[], None] = field(default=_nothing)
    before_inserts: Callable[[], None] = field(default=_nothing)


def _service_row(row: ev.OutboxRow) -> ev.OutboxRow:
    envelope = copy.deepcopy(row.envelope)
    envelope["event_id"] = str(uuid.uuid4())
    envelope["metadata"] = {"written_by": SERVICE}
    return ev.OutboxRow(row.aggregate_id, row.aggregate_type, row.event_type, row.topic,
                        envelope)


def _guard(conn: Connection, batch_id: int) -> str | None:
    """Upstream's: a plain read of the upload status; a terminal one ends the finalization."""
    status = str(conn.execute(text("SELECT status::text FROM cj_batch_uploads WHERE id = :id"),
                              {"id": batch_id}).scalar_one())
    return status if status.startswith(("COMPLETE", "ERROR")) else None


def _rescore(engine: Engine, work: Work) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE cj_processed_essays AS e SET current_bt_score = v.score,"
            " updated_at = now() AT TIME ZONE 'UTC'"
            " FROM unnest(CAST(:ids AS text[]), CAST(:scores AS float8[])) AS v(id, score)"
            " WHERE e.els_essay_id = v.id AND e.cj_batch_id = :b"),
            {"b": work.batch_id, "ids": [e for e, _ in work.scores],
             "scores": [s for _, s in work.scores]})


def _project(engine: Engine, work: Work) -> None:
    """Upstream's store_projections: session.add_all, a plain INSERT (dies on the PK)."""
    if not work.projections:
        return
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
            " confidence_score, confidence_label, calculation_metadata, grade_scale)"
            " SELECT v.id, :b, v.grade, 0.5, 'MID', CAST('{}' AS json), 'swedish_8_anchor'"
            " FROM unnest(CAST(:ids AS text[]), CAST(:grades AS text[])) AS v(id, grade)"),
            {"b": work.batch_id, "ids": [e for e, _ in work.projections],
             "grades": [g for _, g in work.projections]})


def insert_events(engine: Engine, work: Work, think: Callable[[], None] = _nothing) -> None:
    """Each outbox row in a transaction of its own (upstream's OutboxManager, no session).
    Alone: a writer that neither reads the status nor touches the batch's rows first."""
    for row in work.rows:
        with engine.begin() as conn:
            ev.insert_row(conn, _service_row(row), datetime.now(UTC))
        think()


def _failure(step: str, exc: DBAPIError) -> str:
    return f"failed at {step}: {type(exc.orig).__name__}"


def service_upstream(engine: Engine, work: Work, gates: Gates = Gates(),
                     think: Callable[[], None] = _nothing) -> str:
    bid = work.batch_id
    with engine.connect() as main:
        tx = main.begin()
        terminal = _guard(main, bid)
        if terminal:
            tx.rollback()
            return f"skipped: status {terminal}"
        gates.after_guard()
        main.execute(text("UPDATE cj_batch_states SET state = 'SCORING',"
                          " last_activity_at = now() WHERE batch_id = :id"), {"id": bid})
        tx.commit()
        think()
        step = "rescoring"
        try:
            _rescore(engine, work)
            tx = main.begin()
            main.execute(text("UPDATE cj_batch_uploads SET status = 'COMPLETE_STABLE',"
                              " completed_at = now() AT TIME ZONE 'UTC', updated_at = now()"
                              " WHERE id = :id"),
                         {"id": bid})
            think()
            step = "projections"
            _project(engine, work)
            gates.before_inserts()
            step = "events"
            insert_events(engine, work, think)
            main.execute(text("UPDATE cj_batch_states SET state = 'COMPLETED',"
                              " last_activity_at = now() WHERE batch_id = :id"), {"id": bid})
            tx.commit()
        except DBAPIError as exc:
            if tx.is_active:
                tx.rollback()
            return _failure(step, exc)
    return "finalized"


def service_status_first(engine: Engine, work: Work, gates: Gates = Gates(),
                         think: Callable[[], None] = _nothing) -> str:
    bid = work.batch_id
    with engine.connect() as conn:
        with conn.begin():
            terminal = _guard(conn, bid)
        if terminal:
            return f"skipped: status {terminal}"
        gates.after_guard()
        with conn.begin():
            conn.execute(text("UPDATE cj_batch_uploads SET status = 'COMPLETE_STABLE',"
                              " completed_at = now() AT TIME ZONE 'UTC', updated_at = now()"
                              " WHERE id = :id"),
                         {"id": bid})
    think()
    try:
        gates.before_inserts()
        insert_events(engine, work, think)
    except DBAPIError as exc:
        return _failure("events", exc)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cj_batch_states SET state = 'COMPLETED',"
                          " last_activity_at = now() WHERE batch_id = :id"), {"id": bid})
    return "finalized"


def service_events_only(engine: Engine, work: Work, gates: Gates = Gates(),
                        think: Callable[[], None] = _nothing) -> str:
    bid = work.batch_id
    with engine.connect() as conn, conn.begin():
        terminal = _guard(conn, bid)
    if terminal:
        return f"skipped: status {terminal}"
    gates.after_guard()
    try:
        gates.before_inserts()
        insert_events(engine, work, think)
    except DBAPIError as exc:
        return _failure("events", exc)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cj_batch_uploads SET status = 'COMPLETE_STABLE',"
                          " completed_at = now() AT TIME ZONE 'UTC', updated_at = now()"
                          " WHERE id = :id"),
                     {"id": bid})
        conn.execute(text("UPDATE cj_batch_states SET state = 'COMPLETED',"
                          " last_activity_at = now() WHERE batch_id = :id"), {"id": bid})
    return "finalized"


SERVICES: dict[str, Callable[..., str]] = {
    "upstream": service_upstream, "status_first": service_status_first,
    "events_only": service_events_only}


# --- the relay ----------------------------------------------------------------------------------

def publish_all(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("UPDATE event_outbox SET published_at = clock_timestamp()"
                                     " WHERE published_at IS NULL")).rowcount)


class Relay:
    """Publishes each unpublished row 0..max_delay_ms after it first saw it (a poll every
    2 ms): the relay's UPDATE of published_at, which frees idx_outbox_unique_unpublished."""

    def __init__(self, url: str, max_delay_ms: float, seed: int) -> None:
        self.engine = create_engine(url, pool_size=1)
        self.max_delay = max_delay_ms / 1000
        self.rng = random.Random(seed)
        self.due: dict[str, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.engine.dispose()

    def _run(self) -> None:
        while not self.stopping.wait(0.002):
            with self.engine.begin() as conn:
                now = time.monotonic()
                for (rid,) in conn.execute(text(
                        "SELECT CAST(id AS text) FROM event_outbox WHERE published_at IS NULL")):
                    self.due.setdefault(rid, now + self.rng.uniform(0, self.max_delay))
                ready = [rid for rid, at in self.due.items() if at <= now]
                if ready:
                    conn.execute(text(
                        "UPDATE event_outbox SET published_at = clock_timestamp()"
                        " WHERE CAST(id AS text) = ANY(:ids) AND published_at IS NULL"),
                        {"ids": ready})
                    for rid in ready:
                        del self.due[rid]

    def drain(self, engine: Engine, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if not conn.execute(text("SELECT count(*) FROM event_outbox"
                                         " WHERE published_at IS NULL")).scalar_one():
                    return
            time.sleep(0.005)
        raise AssertionError("the relay did not publish every row in time")


# --- the outcome of one batch -------------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    """The events a batch ended with, per kind, and who wrote them."""

    ours: dict[str, int]
    theirs: dict[str, int]
    status: str
    state: str

    @property
    def total(self) -> dict[str, int]:
        return {k: self.ours[k] + self.theirs[k] for k in KINDS}

    @property
    def duplicated(self) -> list[str]:
        return [k for k in KINDS if self.total[k] > 1]

    @property
    def missing(self) -> list[str]:
        return [k for k in KINDS if self.total[k] == 0]


def tally(engine: Engine, batch_id: int) -> Tally:
    found = events_of(engine, batch_id)
    theirs = {k: sum(1 for r in found[k] if r["data"].get("metadata", {}).get("written_by")
                     == SERVICE) for k in KINDS}
    ours = {k: len(found[k]) - theirs[k] for k in KINDS}
    with engine.connect() as conn:
        status, state = conn.execute(text(
            "SELECT u.status::text, s.state::text FROM cj_batch_uploads u"
            " JOIN cj_batch_states s ON s.batch_id = u.id WHERE u.id = :id"),
            {"id": batch_id}).one()
    return Tally(ours, theirs, str(status), str(state))


# --- the hammer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    tries: int  # per cell (service model x paused)
    seed: int
    models: tuple[str, ...] = MODELS
    paused: tuple[bool, ...] = (False, True)
    relay_max_ms: float = 20.0
    think_ms: float = 10.0  # the service's pauses between its steps: 0..think_ms each
    pause_ms: float = 30.0  # paused: 0..pause_ms inside the BT fit and before COMMIT
    # The service starts -lead_ms .. window_ms (+ pause_ms when paused) + lead_ms after the
    # finalizer: fixed, so that two codes are hammered over the same moments.
    window_ms: float = 150.0
    lead_ms: float = 30.0


@dataclass(frozen=True)
class Record:
    model: str
    paused: bool
    anchored: bool
    offset_ms: float
    finalizer: str  # outcome
    reason: str
    took_ms: float  # the finalizer's transaction, from its start
    service: str
    ours: dict[str, int]
    theirs: dict[str, int]
    status: str
    state: str
    heal: str  # the next attempt's outcome (the batch's stamps aged past the quiet period)
    healed: bool  # it wrote no completion and no resource event, and the batch is COMPLETED
    heal_results: int  # result events it wrote (an R3 correction; see _heal)


@contextmanager
def after_fit(then: Callable[[], None]) -> Iterator[None]:
    """Run `then` right after every BT fit: between the finalizer's guard (its reads of the
    outbox) and its INSERTs, where scenario S1 of tests/db/test_finalizer_race.py puts the
    service."""
    from exporter.finalizer import bt

    real = bt.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        then()
        return result

    bt.fit = fit
    try:
        yield
    finally:
        bt.fit = real


def age(engine: Engine, batch_id: int) -> None:
    """Every stamp of the batch an hour back, as the next automatic attempt (after
    min_wedged_seconds) finds it: past refinalize's quiet period."""
    with engine.begin() as conn:
        for sql in ("UPDATE cj_batch_states SET last_activity_at = last_activity_at"
                    " - interval '1 h' WHERE batch_id = :id",
                    "UPDATE cj_batch_uploads SET updated_at = updated_at - interval '1 h'"
                    " WHERE id = :id",
                    "UPDATE event_outbox SET created_at = created_at - interval '1 h'"
                    " WHERE aggregate_id IN (CAST(:id AS text),"
                    "  (SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :id))"):
            conn.execute(text(sql), {"id": batch_id})


def _heal(engine: Engine, batch_id: int) -> str:
    """The next automatic attempt: never a completion or a charge. A batch the service left in
    SCORING after the residual race is closed, or gets one corrected result (R3): upstream's
    rescoring rewrote its essay rows, which moves its SE reference anchor (the last anchor in
    row order), and with it the confidences a finalization publishes now."""
    from exporter.finalizer.refinalize import refinalize

    age(engine, batch_id)
    return str(refinalize(engine, batch_id, replica="heal", dry_run=False).outcome)


@dataclass(frozen=True)
class Try:
    """One try's draws: when the service starts relative to the finalizer (ms, negative:
    first), the finalizer's two pauses (s), the service's think times (s)."""

    model: str
    paused: bool
    batch_id: int
    anchored: bool
    offset_ms: float
    fit_pause: float
    commit_pause: float
    thinks: tuple[float, ...]


@dataclass(frozen=True)
class Engines:
    admin: Engine
    finalizer: Engine
    service: Engine


def _race(engines: Engines, t: Try, work: Work, delay: list[float]) -> tuple[Any, str]:
    """The finalizer and the service on two threads, started together, one of them late."""
    from exporter.finalizer.refinalize import Hooks, refinalize

    start = threading.Barrier(2)
    out: dict[str, Any] = {}
    thinks = iter(t.thinks)
    delay[0] = t.fit_pause

    def run_finalizer() -> None:
        start.wait()
        time.sleep(max(0.0, -t.offset_ms) / 1000)
        out["finalizer"] = refinalize(
            engines.finalizer, t.batch_id, replica="hammer", dry_run=False,
            hooks=Hooks(before_commit=lambda: time.sleep(t.commit_pause)))

    def run_service() -> None:
        start.wait()
        time.sleep(max(0.0, t.offset_ms) / 1000)
        out["service"] = SERVICES[t.model](engines.service, work,
                                           think=lambda: time.sleep(next(thinks, 0.0)))

    threads = [threading.Thread(target=run_finalizer), threading.Thread(target=run_service)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return out["finalizer"], str(out.get("service", "?"))


def _draw(config: Config, rng: random.Random, cell: tuple[str, bool],
          batch: tuple[int, bool]) -> Try:
    model, paused = cell
    pause = config.pause_ms / 1000 if paused else 0.0
    end = config.window_ms + config.pause_ms * paused + config.lead_ms
    return Try(model, paused, batch[0], batch[1],
               round(rng.uniform(-config.lead_ms, end), 1),
               rng.uniform(0, pause), rng.uniform(0, pause),
               tuple(rng.uniform(0, config.think_ms) / 1000 for _ in range(8)))


def hammer(url: str, config: Config) -> list[Record]:
    """Every cell's tries on fresh batches."""
    rng = random.Random(config.seed)
    cells = [(m, p) for m in config.models for p in config.paused]
    engines = Engines(create_engine(url, pool_size=2), create_engine(url, pool_size=1),
                      create_engine(url, pool_size=3))
    admin = engines.admin
    records: list[Record] = []
    try:
        anchored = [rng.random() < 0.5 for _ in range(len(cells) * config.tries)]
        batches = iter(zip(seed_batches(admin, anchored, rng), anchored, strict=True))
        delay = [0.0]
        with (Relay(url, config.relay_max_ms, rng.getrandbits(32)) as relay,
              after_fit(lambda: time.sleep(delay[0]))):
            for cell in cells:
                for _ in range(config.tries):
                    t = _draw(config, rng, cell, next(batches))
                    result, service = _race(engines, t, work_for(admin, t.batch_id), delay)
                    relay.drain(admin)
                    first = tally(admin, t.batch_id)
                    heal = _heal(admin, t.batch_id)
                    relay.drain(admin)
                    after = tally(admin, t.batch_id)
                    records.append(Record(
                        t.model, t.paused, t.anchored, t.offset_ms, result.outcome,
                        result.reason, float(result.detail.get("took_ms", 0.0)), service,
                        first.ours, first.theirs, first.status, first.state, heal,
                        after.state == "COMPLETED" and all(
                            after.total[k] == first.total[k] for k in ("completed", "resource")),
                        after.total["result"] - first.total["result"]))
    finally:
        for engine in (engines.admin, engines.finalizer, engines.service):
            engine.dispose()
    return records


# --- summaries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    model: str
    paused: bool
    tries: int
    duplicated: int  # batches with a second event of any kind
    charged_twice: int  # a second resource event (R1)
    completions_twice: int  # a second completion event (R2)
    results_twice: int
    missing: int  # a batch without one of the three events (must be 0)
    ours_max: int  # the most events of one kind the finalizer wrote on one batch (must be 1)
    finalizer: dict[str, int]
    service: dict[str, int]
    left_scoring: int  # ended in state SCORING (the service overwrote COMPLETED and failed)
    healed: int  # the next attempt wrote no completion, no charge, and left it COMPLETED
    heal_corrections: int  # result events the next attempt wrote (R3)
    applied_ms: float  # median transaction time of the tries the finalizer applied


def summarize(records: Sequence[Record]) -> list[Cell]:
    cells: dict[tuple[str, bool], list[Record]] = {}
    for r in records:
        cells.setdefault((r.model, r.paused), []).append(r)
    out = []
    for (model, paused), rs in cells.items():
        totals = [{k: r.ours[k] + r.theirs[k] for k in KINDS} for r in rs]
        out.append(Cell(
            model, paused, len(rs),
            sum(1 for t in totals if max(t.values()) > 1),
            sum(1 for t in totals if t["resource"] > 1),
            sum(1 for t in totals if t["completed"] > 1),
            sum(1 for t in totals if t["result"] > 1),
            sum(1 for t in totals if min(t.values()) == 0),
            max(max(r.ours.values()) for r in rs),
            dict(Counter(r.finalizer for r in rs)),
            dict(Counter(_short(r.service) for r in rs)),
            sum(1 for r in rs if r.state == "SCORING"),
            sum(1 for r in rs if r.healed), sum(r.heal_results for r in rs),
            round(statistics.median([r.took_ms for r in rs if r.finalizer == "applied"]
                                    or [0.0]), 1)))
    return out


def _short(outcome: str) -> str:
    return outcome.split(":")[0] if outcome.startswith("skipped") else outcome


def table(title: str, cells: Sequence[Cell]) -> str:
    lines = [title, "| service | paused | tries | applied in (ms) | any duplicate | charged twice |"
             " 2 completions | 2 results | missing | left SCORING | next attempt | finalizer |"
             " service |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        fin = ", ".join(f"{k} {v}" for k, v in sorted(c.finalizer.items()))
        svc = ", ".join(f"{k} {v}" for k, v in sorted(c.service.items()))
        lines.append(f"| {c.model} | {'yes' if c.paused else 'no'} | {c.tries} | {c.applied_ms:g}"
                     f" | {c.duplicated}"
                     f" | {c.charged_twice} | {c.completions_twice} | {c.results_twice}"
                     f" | {c.missing} | {c.left_scoring} | {c.healed} healed,"
                     f" {c.heal_corrections} corrected | {fin} | {svc} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--tries", type=int, default=4)
    parser.add_argument("--seed", type=int, default=12007)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--paused", default="no,yes", help="no, yes or both (no,yes)")
    args = parser.parse_args(argv)
    config = Config(tries=args.tries, seed=args.seed, models=tuple(args.models.split(",")),
                    paused=tuple(p == "yes" for p in args.paused.split(",")))
    records = hammer(args.url, config)
    json.dump({"records": [asdict(r) for r in records]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
