"""The rule pack and the dashboards only name series the exporter really exports.

The real `cj-health-exporter serve` polls a PostgreSQL seeded with the demo scenarios (every
problem kind at least once), with the finalizer authorized in dry-run mode (it only plans, so
nothing changes, but its metrics are exported as in a deployment that remediates); its /metrics
is the reference. Every vector selector of every rule
must name an exported metric (or a recording rule of the pack, resolved to the metrics it reads),
and every label value a rule filters on (problem="wedged", kind="pending", cj_state=...) must
occur on those metrics. The dashboards' expressions must name exported metrics too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from exporter.vocabulary import FAMILIES
from tests.support.database import Server, database
from tests.support.exposition import Exposition, parse
from tests.support.paths import ROOT
from tests.support.process import ExporterProcess, run_cli, selectors

RULES = ROOT / "alerts" / "cj-batch-health.rules.yml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
# Series Prometheus makes itself, not the exporter.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Target labels Prometheus attaches at scrape time.
TARGET_LABELS = {"job", "instance"}

Samples = list[tuple[str, dict[str, str]]]


@pytest.fixture(scope="module")
def exposition(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposition]:
    """What the exporter serves over the seeded demo database, with the finalizer on (dry run)
    and after its first cycle."""
    with database(pg_server, demo=True) as db:
        # the operator's step before enabling the finalizer: its audit table and pause switch
        install = run_cli("install-view", "--remediation", "--dsn", db.url)
        assert install.returncode == 0, install.stdout + install.stderr
        config = tmp_path_factory.mktemp("contract") / "exporter.yml"
        config.write_text(yaml.safe_dump({"remediation": {
            "enabled": True, "dry_run": True, "write_dsn": db.url,
            "actions": ["backfill_anchors", "refinalize"], "interval_seconds": 1}}))
        problems = set().union(*db.planted.values())
        with ExporterProcess(db.url, extra_args=["--config", str(config)]) as exporter:
            # the first poll is in when the server answers; make sure it saw every problem kind,
            # and that the finalizer's families joined (at the first poll after its first cycle)
            body = exporter.wait_for(lambda body: {
                s.labels["problem"] for s in parse(body).samples("cj_batch_problem")} >= problems
                and "cj_health_remediation_last_cycle_timestamp_seconds" in parse(body).families,
                20)
    yield parse(body)


@pytest.fixture(scope="module")
def exported(exposition: Exposition) -> Samples:
    """(name, labels) of every sample of `exposition`."""
    return [(s.name, dict(s.labels)) for family in exposition.families.values()
            for s in family.samples]


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded_sources() -> dict[str, set[str]]:
    """Recording rule -> the exporter metrics it reads (through other recordings too)."""
    direct = {r["record"]: {s.name for s in selectors(r["expr"])} for r in rules()
              if "record" in r}

    def resolve(name: str) -> set[str]:
        if name not in direct:
            return {name}
        return set().union(*(resolve(source) for source in direct[name]))

    return {name: resolve(name) for name in direct}


def alternatives(op: str, value: str) -> list[str]:
    """The values a matcher asks for: `a` for =, each branch of a plain `a|b` for =~."""
    if op == str(promql_parser.MatchOp.Equal):
        return [value]
    if op == str(promql_parser.MatchOp.Re) and re.fullmatch(r"[\w.:-]+(\|[\w.:-]+)*", value):
        return value.split("|")
    return []


def test_the_demo_exports_every_metric_family_of_the_contract(exposition: Exposition) -> None:
    """Every family of exporter.vocabulary.FAMILIES, and no other, as declared (type, HELP,
    labels), with samples. None is legitimately absent here; elsewhere some are, by design:
    without remediation the finalizer's own families (cycles, blocked, leader, paused, dry_run,
    wedged_batches, last_cycle_timestamp; cj_health_remediations_total stays, at 0: checked on
    the plain demo in tests/process/test_demo.py); last_cycle_timestamp until its first cycle;
    last_success and poll_duration until the first poll; every per-batch, aggregate and outbox
    family while the snapshot is stale (tests/unit/test_collector.py)."""
    assert set(exposition.families) == set(FAMILIES), (
        f"declared, not exported: {sorted(set(FAMILIES) - set(exposition.families))}; "
        f"exported, not declared: {sorted(set(exposition.families) - set(FAMILIES))}")
    for name, family in exposition.families.items():
        declared = FAMILIES[name]
        assert (family.type, family.documentation) == (declared.type, declared.help), name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) == set(declared.labels), sample


def test_every_metric_a_rule_reads_is_exported(exported: Samples) -> None:
    names = {name for name, _ in exported}
    sources = recorded_sources()
    missing = {}
    for rule in rules():
        for selector in selectors(rule["expr"]):
            for metric in sources.get(selector.name, {selector.name}):
                if metric not in names | SYNTHETIC:
                    missing[metric] = rule.get("alert") or rule.get("record")
    assert not missing, f"rules read metrics the exporter does not export: {missing}"


def test_every_label_value_a_rule_filters_on_occurs_in_the_exported_series(
        exported: Samples) -> None:
    sources = recorded_sources()
    checked, missing = 0, []
    for rule in rules():
        for selector in selectors(rule["expr"]):
            metrics = sources.get(selector.name, {selector.name}) - SYNTHETIC
            for label, op, value in selector.matchers:
                if label in TARGET_LABELS or label == "__name__" or not metrics:
                    continue
                for wanted in alternatives(op, value):
                    checked += 1
                    if not any(name in metrics and labels.get(label) == wanted
                               for name, labels in exported):
                        missing.append(f"{rule.get('alert') or rule.get('record')}: "
                                       f"{sorted(metrics)}{{{label}={wanted!r}}}")
    assert checked >= 10, "the matcher walk found almost nothing: is the parser API changed?"
    assert not missing, "rules filter on label values no exported series has:\n" + "\n".join(
        missing)


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def dashboard_expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and label_values() variable."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(board.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield f"panel {panel.get('title')!r}", target["expr"]
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            yield f"annotation {annotation.get('name')!r}", annotation["expr"]
    for variable in board.get("templating", {}).get("list", []):
        match = re.match(r"^\s*label_values\((.+),\s*\w+\s*\)\s*$", str(variable.get("query")))
        if variable.get("type") == "query" and match:
            yield f"variable {variable['name']!r}", match.group(1)


def test_every_metric_a_dashboard_reads_is_exported(exported: Samples) -> None:
    assert DASHBOARDS, "no dashboards/*.json"
    names = {name for name, _ in exported}
    sources = recorded_sources()
    seen, missing = 0, []
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for where, expr in dashboard_expressions(board):
            # Grafana variables: durations for the built-ins, a plain value for the others
            concrete = VARIABLE.sub(
                lambda m: "5m" if next(g for g in m.groups() if g).startswith("__") else "x",
                expr)
            for selector in selectors(concrete):
                seen += 1
                for metric in sources.get(selector.name, {selector.name}):
                    if metric not in names | SYNTHETIC:
                        missing.append(f"{path.name} {where}: {metric}")
    assert seen >= 20
    assert not missing, "dashboards read metrics the exporter does not export:\n" + "\n".join(
        missing)
