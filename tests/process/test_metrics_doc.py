"""docs/metrics.md, exporter/vocabulary.py and the real /metrics agree, both ways, in every family,
type, label and enumerated label value.

The reference exposition is a real `cj-health-exporter serve` over a PostgreSQL seeded with the
demo scenarios (every problem kind at least once), with the finalizer enabled in dry-run mode so
that its families are exported as in a deployment that remediates. A second `serve` without
remediation shows what the finalizer section says is exported while the finalizer is off.
HELP texts are not compared (the docs explain more than a HELP line).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from exporter.vocabulary import (
    ACTIONS,
    ANCHOR_GRADE_TIERS,
    BLOCK_REASONS,
    CYCLE_RESULTS,
    EXPORTED_FAMILIES,
    LEADER_METHODS,
    OUTCOMES,
    POLL_ERROR_REASONS,
    PROBLEM_KINDS,
    UNREADABLE_DOCUMENT_COLUMNS,
    UNRESOLVED,
    exposed_name,
)
from tests.support.database import Server, database
from tests.support.exposition import parse
from tests.support.paths import ROOT
from tests.support.process import ExporterProcess

DOC = ROOT / "docs" / "metrics.md"
# Labels whose values are a closed set: the docs must enumerate every value, and only those.
ENUMERATED = ("problem", "kind", "source", "event", "reason", "action", "outcome", "result",
              "document", "tier")
PROBLEMS = tuple(kind.label for kind in PROBLEM_KINDS)
# (exposed family, label) -> the vocabulary's values
VOCABULARY_VALUES = {
    ("cj_batch_problem", "problem"): PROBLEMS,
    ("cj_batches_problem", "problem"): PROBLEMS,
    ("cj_health_poll_errors_total", "reason"): POLL_ERROR_REASONS,
    ("cj_health_remediations_total", "action"): ACTIONS,
    ("cj_health_remediations_total", "outcome"): OUTCOMES,
    ("cj_health_remediation_blocked", "reason"): BLOCK_REASONS,
    ("cj_health_remediation_cycles_total", "result"): CYCLE_RESULTS,
    ("cj_unreadable_documents", "document"): tuple(UNREADABLE_DOCUMENT_COLUMNS),
    ("cj_batch_anchor_grade_resolution", "tier"): (*ANCHOR_GRADE_TIERS, UNRESOLVED),
}
# Closed sets of which an exposition shows one value only (a replica holds its lock one way):
# the docs must enumerate exactly the vocabulary's.
DOCUMENTED_VALUES = {
    ("cj_health_remediation_leader_election", "method"): LEADER_METHODS,
}
FINALIZER_SECTION = "Finalizer (remediation) metrics"


@dataclass
class Family:
    """One family as the docs or an exposition shows it, by its exposed name."""

    type: str
    labels: tuple[str, ...]
    values: dict[str, set[str]] = field(default_factory=dict)  # label -> values
    section: str = ""


# --- docs/metrics.md ------------------------------------------------------------------------


def documented(path: Path = DOC) -> dict[str, Family]:
    """Every table row `| `name` | labels | type | meaning |`, with its section heading.

    Labels are the backticked names at the start of the cell or after a comma; an enumeration
    is "`label` = `a` \\| `b`". A sentence "`label` is one of: `a`, `b`" enumerates a label for
    every family of the page that has it without enumerating it in its row.
    """
    families: dict[str, Family] = {}
    section = ""
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, f"docs/metrics.md row without 4 cells: {line}"
        name, labels, type_ = cells[0].strip("`"), cells[1], cells[2]
        assert name not in families, f"{name} documented twice"
        family = Family(type_, tuple(re.findall(r"(?:^|,\s*)`(\w+)`", labels)), section=section)
        for label, enum in re.findall(r"`(\w+)` = ((?:`\w+`(?: \\\| )?)+)", labels):
            family.values[label] = set(re.findall(r"`(\w+)`", enum))
        families[name] = family
    for label, enum in re.findall(r"`(\w+)` is one of: ((?:`\w+`,?\s*)+)", text):
        for family in families.values():
            if label in family.labels and label not in family.values:
                family.values[label] = set(re.findall(r"`(\w+)`", enum))
    return families


# --- a real /metrics ------------------------------------------------------------------------


def exposed(text: str) -> dict[str, Family]:
    """The families of an exposition, by exposed name (counters with `_total`)."""
    out: dict[str, Family] = {}
    for metric in parse(text).families.values():
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        labels: dict[str, set[str]] = {}
        for sample in metric.samples:
            assert sample.name in (name, metric.name), f"unexpected sample {sample.name}"
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
        out[name] = Family(metric.type, tuple(sorted(labels)),
                           {k: v for k, v in labels.items() if k in ENUMERATED})
    return out


@dataclass(frozen=True)
class Expositions:
    remediating: dict[str, Family]  # finalizer enabled, dry run
    plain: dict[str, Family]  # remediation off
    planted: dict[int, frozenset[str]]
    text: str  # the remediating exposition
    plain_text: str


def _scrape_until(exporter: ExporterProcess, wanted: tuple[str, ...], timeout: float) -> str:
    """The first exposition with every family in `wanted` (or the last one after `timeout`)."""
    deadline = time.monotonic() + timeout
    text = exporter.metrics()
    while not set(wanted) <= set(parse(text).families) and time.monotonic() < deadline:
        time.sleep(0.2)
        text = exporter.metrics()
    return text


def _every_problem(problems: set[str]) -> Callable[[bytes], bool]:
    return lambda body: {s.labels["problem"] for s in parse(body).samples(
        "cj_batch_problem")} >= problems


@pytest.fixture(scope="module")
def expositions(pg_server: Server,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Expositions]:
    # with the finalizer's audit and pause tables
    with database(pg_server, demo=True, remediation=True) as seeded:
        url = seeded.url
        config = tmp_path_factory.mktemp("metrics-doc") / "exporter.yml"
        config.write_text(yaml.safe_dump({"remediation": {
            "enabled": True, "dry_run": True, "write_dsn": url, "actions": list(ACTIONS),
            "interval_seconds": 1}}))
        problems = set().union(*seeded.planted.values())
        with ExporterProcess(url, extra_args=["--config", str(config)]) as exporter:
            exporter.wait_for(_every_problem(problems), 20)
            # the finalizer's families join at the first poll after its first cycle
            text = _scrape_until(
                exporter, ("cj_health_remediation_last_cycle_timestamp_seconds",), 10)
        with ExporterProcess(url) as exporter:
            plain = exporter.wait_for(_every_problem(problems), 20)
    yield Expositions(exposed(text), exposed(plain.decode()), seeded.planted, text,
                      plain.decode())


# --- the three agree --------------------------------------------------------------------------


def test_the_docs_document_exactly_the_declared_families_with_their_types_and_labels() -> None:
    docs = documented()
    declared = {exposed_name(f): f for f in EXPORTED_FAMILIES.values()}
    assert set(docs) == set(declared), (
        f"declared, not documented: {sorted(set(declared) - set(docs))}; "
        f"documented, not declared: {sorted(set(docs) - set(declared))}")
    for name, f in declared.items():
        assert docs[name].type == f.type, name
        assert docs[name].labels == f.labels, f"{name}: docs list labels in exposition order"


def test_the_real_metrics_export_exactly_the_documented_families(
        expositions: Expositions) -> None:
    docs, real = documented(), expositions.remediating
    assert set(real) == set(docs), (
        f"exported, not documented: {sorted(set(real) - set(docs))}; "
        f"documented, not exported: {sorted(set(docs) - set(real))}")
    for name, family in real.items():
        assert family.type == docs[name].type, name
        assert set(family.labels) == set(docs[name].labels), name


def test_every_enumerated_label_is_enumerated_in_the_docs_exactly_as_exported(
        expositions: Expositions) -> None:
    docs, real = documented(), expositions.remediating
    checked = 0
    for name, family in docs.items():
        for label in family.labels:
            if label not in ENUMERATED:
                continue
            assert label in family.values, f"docs/metrics.md: {name} does not enumerate {label}"
            assert real[name].values[label] == family.values[label], (name, label)
            checked += 1
    assert checked >= 11


def test_enumerations_are_the_vocabulary(expositions: Expositions) -> None:
    docs = documented()
    for (name, label), values in VOCABULARY_VALUES.items():
        assert docs[name].values[label] == set(values), (name, label)
        assert expositions.remediating[name].values[label] == set(values), (name, label)
    for (name, label), values in DOCUMENTED_VALUES.items():
        assert docs[name].values[label] == set(values), (name, label)


def test_without_remediation_only_the_idle_action_counter_of_the_finalizer_is_exported(
        expositions: Expositions) -> None:
    """What the finalizer section says: remediations_total always (at 0), the rest only while the
    finalizer runs."""
    finalizer = {n for n, f in documented().items() if f.section == FINALIZER_SECTION}
    assert "cj_health_remediations_total" in finalizer and len(finalizer) >= 8
    plain = expositions.plain
    assert finalizer & set(plain) == {"cj_health_remediations_total"}
    assert set(expositions.remediating) - set(plain) == finalizer - {
        "cj_health_remediations_total"}
    counter = plain["cj_health_remediations_total"]
    assert counter.values == {"action": set(ACTIONS), "outcome": set(OUTCOMES)}
    idle = [s.value for s in parse(expositions.plain_text).samples(
        "cj_health_remediations_total")]
    assert idle == [0.0] * (len(ACTIONS) * len(OUTCOMES))


def test_the_burst_is_0_for_a_healthy_unfinished_batch_and_1_for_a_healthy_finished_one(
        expositions: Expositions) -> None:
    """docs/metrics.md's cj_batch_completion_event_burst sentence, on the demo's healthy
    batches."""
    metrics = parse(expositions.text)
    state = {s.labels["cj_batch_id"]: s.labels["cj_state"]
             for s in metrics.samples("cj_batch_last_activity_timestamp_seconds")}
    burst = {s.labels["cj_batch_id"]: s.value
             for s in metrics.samples("cj_batch_completion_event_burst")}
    healthy = [str(b) for b, problems in expositions.planted.items()
               if not problems and str(b) in burst]
    finished = [b for b in healthy if state[b] == "COMPLETED"]
    unfinished = [b for b in healthy if state[b] not in ("COMPLETED", "FAILED")]
    assert finished and unfinished, (healthy, state)
    assert {burst[b] for b in finished} == {1.0}
    assert {burst[b] for b in unfinished} == {0.0}
