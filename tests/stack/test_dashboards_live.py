"""Every PromQL expression of every dashboard, run against a real Prometheus over real data.

The stack: a seeded PostgreSQL (the demo scenarios, one batch per production failure), the real
`cj-health-exporter serve` polling it every second, and the Debian `prometheus` binary scraping
it every second with the rule pack (alerts/cj-batch-health.rules.yml) loaded, all on 127.0.0.1
with free ports and a temporary storage directory, and always stopped.

Template variables are substituted the way Grafana's Prometheus data source does it (multi-value
variables regex-escaped), with the concrete job, instance and cj_batch_id. Every expression must
be accepted (HTTP 200) as an instant query and, for time series panels, as a range query; the
overview's panels about the planted problems must show exactly the planted batches.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from exporter.demo.scenarios import (
    BATCH20_IDLE,
    OUTBOX_FAILED,
    OUTBOX_OLDEST,
    OUTBOX_UNPUBLISHED,
    RUNAWAY_COMPLETION_RUNS,
    RUNAWAY_DUPLICATES,
)
from tests.support.database import Server, database
from tests.support.paths import ROOT
from tests.support.process import Daemon, ExporterProcess, http_get, load_module

pytestmark = pytest.mark.e2e

DASHBOARDS = ROOT / "dashboards"
RULES = ROOT / "alerts" / "cj-batch-health.rules.yml"
# the rule pack's job (alerts/params.yml) and deploy/prometheus/prometheus.yml's
JOB = "cj-health-exporter"
SCRAPE_INTERVAL_S = 1
# Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval)
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
RANGE_S = 20


lint = load_module("cj_dashboards_lint", DASHBOARDS / "lint.py")


def grafana_multi_value(value: str) -> str:
    """A multi-value/All variable as Grafana interpolates it (prometheusSpecialRegexEscape):
    regex metacharacters escaped, with the backslash doubled for the PromQL string literal."""
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value.replace("\\", "\\\\\\\\"))


class Prometheus(Daemon):
    """The Debian `prometheus` scraping the exporter every second, with the rules loaded."""

    def __init__(self, exporter_port: int, rule_files: list[Path]) -> None:
        folder = Path(tempfile.mkdtemp(prefix="cjh-prom-"))
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        super().__init__("prometheus", folder, lambda port, d: [
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url=http://127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        shutil.rmtree(self.folder, ignore_errors=True)

    def get_json(self, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        """An API call whose status the caller checks (unlike Daemon.api)."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, _, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        return status, json.loads(body)

    def instant(self, expr: str) -> list[dict[str, Any]]:
        status, body = self.get_json("query", query=expr, time=time.time())
        assert status == 200 and body["status"] == "success", (expr, status, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def range(self, expr: str) -> list[dict[str, Any]]:
        end = time.time()
        status, body = self.get_json(
            "query_range", query=expr, start=end - RANGE_S, end=end, step=SCRAPE_INTERVAL_S
        )
        assert status == 200 and body["status"] == "success", (expr, status, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@dataclass
class Stack:
    prometheus: Prometheus
    instance: str
    planted: dict[int, frozenset[str]]

    def batches_with(self, problem: str) -> set[str]:
        return {str(b) for b, problems in self.planted.items() if problem in problems}

    def values(self, cj_batch_id: int | str = "0") -> dict[str, str]:
        return {
            "job": grafana_multi_value(JOB),
            "instance": grafana_multi_value(self.instance),
            "cj_batch_id": str(cj_batch_id),  # single-value: Grafana does not regex-escape
            "__rate_interval": RATE_INTERVAL,
            "__interval": f"{SCRAPE_INTERVAL_S}s",
            "__range": f"{RANGE_S}s",
        }


@pytest.fixture(scope="module")
def stack(pg_server: Server) -> Iterator[Stack]:
    """One seeded database, exporter and Prometheus for every test of this module."""
    with database(pg_server, demo=True) as db:
        planted = db.planted
        problem_batches = {b for b, problems in planted.items() if problems}
        with (
            ExporterProcess(db.url, poll_interval=SCRAPE_INTERVAL_S) as exporter,
            Prometheus(exporter.port, [RULES]) as prometheus,
        ):
            instance = f"127.0.0.1:{exporter.port}"

            # the first scrape comes ~5 s after start (Prometheus 2.42); then the rule pack's
            # zero-`for` alert (CJCompletionEventRunaway) fires on the next evaluation, and
            # increase(...[$__rate_interval]) needs a few samples in its window
            def ready() -> bool:
                problems = f'max by (cj_batch_id) (cj_batch_problem{{job="{JOB}"}})'
                samples = f'count_over_time(cj_health_up{{job="{JOB}"}}[{RATE_INTERVAL}])'
                return (
                    len(prometheus.instant(problems)) == len(problem_batches)
                    and bool(prometheus.instant(f'ALERTS{{job="{JOB}", alertstate="firing"}}'))
                    and any(value(s) >= 3 for s in prometheus.instant(samples))
                )

            prometheus.wait(ready, 25, "the planted problems, a firing alert, 3 samples")
            yield Stack(prometheus, instance, planted)


def dashboard(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


def run_all(stack: Stack, board: dict[str, Any], cj_batch_id: int | str) -> dict[str, Any]:
    """Run every expression; return {where: instant result}. Fails on any rejected query."""
    results: dict[str, Any] = {}
    values = stack.values(cj_batch_id)
    for query in lint.iter_queries(board):
        expr = lint.substitute(query.expr, values)
        if query.kind == "variable":
            continue  # label_values() is checked through the label API below
        results[query.where] = stack.prometheus.instant(expr)
        if not query.instant:  # Grafana runs time series targets and annotations as ranges
            stack.prometheus.range(expr)
    return results


def by_title(board: dict[str, Any], results: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The instant result of a panel's targets (all of them, concatenated)."""
    assert any(p["title"] == title for p in board["panels"]), title
    prefix = f"panel {title!r} target "
    return [series for where, result in results.items() if where.startswith(prefix)
            for series in result]  # fmt: skip


def value(series: dict[str, Any]) -> float:
    return float(series["value"][1])


def label_values(
    stack: Stack, board: dict[str, Any], name: str, cj_batch_id: str = "0"
) -> set[str]:
    """A query variable's options, fetched like Grafana does (label values API with match[])."""
    variable = next(v for v in board["templating"]["list"] if v["name"] == name)
    match = lint.LABEL_VALUES.match(variable["query"])
    assert match, variable["query"]
    selector = lint.substitute(match.group("selector"), stack.values(cj_batch_id))
    now = time.time()
    status, body = stack.prometheus.get_json(
        f"label/{match.group('label')}/values", **{"match[]": selector}, start=now - 60, end=now
    )
    assert status == 200 and body["status"] == "success", body
    return set(body["data"])


# --- tests -----------------------------------------------------------------------------------


def test_variables_offer_the_live_job_instance_and_batches(stack: Stack) -> None:
    for name in ("overview.json", "batch.json"):
        board = dashboard(name)
        assert label_values(stack, board, "job") == {JOB}
        assert label_values(stack, board, "instance") == {stack.instance}
    # every exported batch: the planted ones (all recent), not the HISTORY_IDLE-old one
    offered = label_values(stack, dashboard("batch.json"), "cj_batch_id")
    assert offered == {str(b) for b in stack.planted}


def test_overview_every_query_runs_and_the_planted_problems_show(stack: Stack) -> None:
    board = dashboard("overview.json")
    results = run_all(stack, board, cj_batch_id="0")
    assert len(results) == sum(len(p.get("targets", [])) for p in board["panels"]) + 1

    def panel(title: str) -> list[dict[str, Any]]:
        return by_title(board, results, title)

    # every panel shows data, except the finalizer's, which acts only when authorized
    empty = {p["title"] for p in board["panels"] if p["targets"] and not panel(p["title"])}
    assert empty <= {"Remediation actions"}, empty

    planted_counts = {
        kind: len(stack.batches_with(kind)) for kind in lint.load_contract().values["problem"]
    }
    assert {
        s["metric"]["problem"]: value(s) for s in panel("Problem batches by kind")
    } == planted_counts
    assert [value(s) for s in panel("Wedged")] == [len(stack.batches_with("wedged"))]
    assert [value(s) for s in panel("Stuck in SCORING")] == [
        len(stack.batches_with("stuck_scoring"))
    ]

    wedged = panel("Wedged batches")
    assert {s["metric"]["cj_batch_id"] for s in wedged} == stack.batches_with("wedged")
    idle = BATCH20_IDLE.total_seconds()
    assert all(s["metric"]["bos_batch_id"] and value(s) > idle - 120 for s in wedged)
    assert {(s["metric"]["cj_state"], s["metric"]["upload_status"]) for s in wedged} == {
        ("WAITING_CALLBACKS", "COMPLETE_STABLE")
    }

    with_problems = {
        (s["metric"]["cj_batch_id"], s["metric"]["problem"]) for s in panel("Batches with problems")
    }
    assert with_problems == {(str(b), p) for b, problems in stack.planted.items() for p in problems}
    assert all(value(s) > 0 for s in panel("Batches with problems"))

    duplicates = panel("Duplicate completion events")
    assert {s["metric"]["cj_batch_id"] for s in duplicates} == stack.batches_with(
        "duplicate_completion"
    )
    # the runaway loop's completion and result events
    assert {value(s) for s in duplicates} == {float(RUNAWAY_COMPLETION_RUNS)}
    bursts = panel("Completion event bursts")
    assert {s["metric"]["cj_batch_id"] for s in bursts} == stack.batches_with(
        "duplicate_completion"
    )
    assert {s["metric"]["event"]: value(s) for s in panel("Duplicate outbox events")}[
        "completed"
    ] >= RUNAWAY_DUPLICATES

    assert [value(s) for s in panel("Failed outbox events")] == [float(OUTBOX_FAILED)]
    # the pending ones and those the relay gave up on
    assert value(panel("Unpublished outbox events")[0]) >= OUTBOX_UNPUBLISHED
    assert value(panel("Oldest unpublished event")[0]) >= OUTBOX_OLDEST.total_seconds() - 5
    assert len(panel("Outbox backlog")) == 2 and len(panel("Oldest unpublished outbox event")) == 1

    states = {
        (s["metric"]["cj_state"], s["metric"]["upload_status"])
        for s in panel("Batches by state and status")
    }
    assert {("WAITING_CALLBACKS", "COMPLETE_STABLE"), ("SCORING", "FETCHING_CONTENT")} <= states

    assert [value(s) for s in panel("Exporter up")] == [1.0]
    assert 0 <= value(panel("Time since last successful poll")[0]) < 10
    assert [value(s) for s in panel("Per-batch series")] == [0.0]
    assert len(panel("Exporter version")) == 1 and len(panel("Poll duration")) == 1
    exported = results["panel 'Exported and dropped batches' target A"]
    dropped = results["panel 'Exported and dropped batches' target B"]
    assert value(exported[0]) >= len([b for b, p in stack.planted.items() if p])
    assert [value(s) for s in dropped] == [0.0]

    # the page and its panel meet: the rule pack's zero-`for` alert is on the annotation query
    alerts = results["annotation 'Firing CJ alerts'"]
    runaway = [a for a in alerts if a["metric"]["alertname"] == "CJCompletionEventRunaway"]
    assert {a["metric"]["cj_batch_id"] for a in runaway} == stack.batches_with(
        "duplicate_completion"
    )
    assert all("instance" not in a["metric"] for a in alerts)  # why annotations skip $instance


def test_batch_drilldown_every_query_runs_and_shows_the_wedged_batch(stack: Stack) -> None:
    board = dashboard("batch.json")
    (wedged,) = stack.batches_with("wedged")
    results = run_all(stack, board, cj_batch_id=wedged)

    def panel(title: str) -> list[dict[str, Any]]:
        return by_title(board, results, title)

    assert all(panel(p["title"]) for p in board["panels"] if p["targets"])
    (row,) = panel("Batch")
    assert row["metric"]["cj_batch_id"] == wedged
    assert (row["metric"]["cj_state"], row["metric"]["upload_status"]) == (
        "WAITING_CALLBACKS", "COMPLETE_STABLE")  # fmt: skip
    idle = BATCH20_IDLE.total_seconds()
    assert abs(value(row) / 1000 - (time.time() - idle)) < 120  # a timestamp in ms
    assert value(panel("Time since last activity")[0]) > idle - 120
    assert {s["metric"]["problem"] for s in panel("Problems")} == stack.planted[int(wedged)]
    assert [value(s) for s in panel("Grade projections")] == [0.0]
    kinds = {s["metric"]["kind"] for s in panel("Comparisons")}
    assert {"total", "submitted", "completed", "pending"} <= kinds
    anchors = panel("Anchors")
    assert any("source" not in s["metric"] and value(s) > 0 for s in anchors)  # mismatches
    assert len(panel("State and status over time")) == 1
    # all COMPARISONS of its budget done, never finalized
    assert value(panel("Progress")[0]) == 1.0


def test_batch_drilldown_shows_the_alert_of_its_batch(stack: Stack) -> None:
    board = dashboard("batch.json")
    (runaway,) = stack.batches_with("duplicate_completion")
    results = run_all(stack, board, cj_batch_id=runaway)
    alerts = results["annotation 'Firing CJ alerts'"]
    assert {a["metric"]["alertname"] for a in alerts} >= {"CJCompletionEventRunaway"}
    assert {a["metric"]["cj_batch_id"] for a in alerts} == {runaway}
    # the alert list panel's label filter selects the same alert in Prometheus' alert API
    alert_list = next(p for p in board["panels"] if p["type"] == "alertlist")
    wanted = dict(
        re.findall(r'(\w+)=~?"([^"]*)"', alert_list["options"]["alertInstanceLabelFilter"])
    )
    assert wanted == {"job": "${job:regex}", "cj_batch_id": "$cj_batch_id"}
    status, body = stack.prometheus.get_json("alerts")
    assert status == 200
    matching = [
        a for a in body["data"]["alerts"]
        if a["labels"].get("job") == JOB and a["labels"].get("cj_batch_id") == runaway
    ]  # fmt: skip
    assert any(a["labels"]["alertname"] == "CJCompletionEventRunaway" for a in matching)
    events = {
        s["metric"].get("event"): value(s)
        for s in by_title(board, results, "Outbox events for this batch")
    }
    assert events["completed"] == events["result"] == RUNAWAY_COMPLETION_RUNS
