"""End to end: a wedged CJ batch in PostgreSQL pages a person through the real alerting path.

    PostgreSQL (demo scenarios: the Batch 20 wedge, every other problem, healthy batches)
      -> `cj-health-exporter serve` (polls every second)
      -> the Debian `prometheus` (scrapes and evaluates every second; the rule pack generated from
         alerts/cjalerts.py with `for: 0s`, except the exporter-health alerts that keep theirs)
      -> `prometheus-alertmanager` (alerts/alertmanager.example.yml with the webhook URLs pointed
         at this test and group_wait 1s)
      -> a webhook receiver in this test (`/pager` for critical, `/ticket` for warning).

Everything listens on 127.0.0.1 on free ports, keeps its files in a temporary folder, and is
stopped in `finally` blocks, also when a test fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from exporter.vocabulary import PROBLEM_KINDS
from tests.support.database import Server, database
from tests.support.paths import ROOT
from tests.support.process import Daemon, ExporterProcess, free_port, load_module

pytestmark = pytest.mark.e2e

ALERTS = ROOT / "alerts"
JOB = "cj-health-exporter"
PAGE_DEADLINE_S = 60.0  # the bar: the page reaches the receiver in under a minute
# the exporter-health alerts keep their `for:`: with 0s, absent(up) would page at every start,
# before Prometheus's first scrape
KEEP_FOR = ("CJHealthExporterDown", "CJHealthPollFailing", "CJHealthPollStale")
PROBLEM_ALERTS = {kind.label: kind.alert for kind in PROBLEM_KINDS}
RECEIVERS = {"critical": "pager", "warning": "ticket"}


gen = load_module("cj_alerts_generate_e2e", ALERTS / "generate.py")


# --- the webhook receiver --------------------------------------------------------------------


@dataclass
class Notification:
    receiver: str  # the URL path without the slash: pager | ticket
    at: float  # time.monotonic() on arrival
    payload: dict[str, Any]


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: records every POST (Alertmanager webhook format v4)."""

    port: int = field(default_factory=free_port)
    received: list[Notification] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.port}/{receiver}"

    def __enter__(self) -> Webhook:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with webhook.changed:
                    webhook.received.append(
                        Notification(self.path.strip("/"), time.monotonic(), json.loads(body)))
                    webhook.changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def alerts(self) -> list[tuple[str, float, dict[str, Any]]]:
        """(receiver, arrival, alert) of every alert of every notification so far."""
        with self.changed:
            return [(n.receiver, n.at, alert) for n in self.received
                    for alert in n.payload["alerts"]]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


# --- Prometheus and Alertmanager processes ---------------------------------------------------


def short_rules() -> str:
    """The rule pack from the same generator and parameters, with `for: 0s` for the alerts of
    batches and of the outbox."""
    raw = gen.load_params(ALERTS / "params.yml")
    text_: str = gen.render(gen.override_for(raw, "0s", keep=KEEP_FOR))
    return text_


def alertmanager_config(webhook: Webhook) -> dict[str, Any]:
    """alerts/alertmanager.example.yml with this test's webhook and second-scale timers."""
    config: dict[str, Any] = yaml.safe_load(
        (ALERTS / "alertmanager.example.yml").read_text(encoding="utf-8"))
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook.url(receiver["name"])
    return config


@dataclass
class Stack:
    started: float  # time.monotonic() when Prometheus was started
    planted: dict[int, frozenset[str]]
    bos: dict[int, str]
    unreadable: set[str]  # batches with a JSON document PostgreSQL cannot read
    rules: dict[str, Any]  # alertname -> the first rule of that name in the short pack
    prometheus: Daemon
    alertmanager: Daemon
    webhook: Webhook

    def healthy(self) -> set[str]:
        """No problem and every document readable (an unreadable one leaves facts unknown)."""
        return {str(b) for b, problems in self.planted.items() if not problems} - self.unreadable

    def firing(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.prometheus.api("alerts")["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


@pytest.fixture(scope="module")
def stack(pg_server: Server) -> Iterator[Stack]:
    folder = Path(tempfile.mkdtemp(prefix="cjh-e2e-alerting-"))
    rules_text = short_rules()
    (folder / "rules.yml").write_text(rules_text)
    rules: dict[str, Any] = {}
    for group in yaml.safe_load(rules_text)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules.setdefault(rule["alert"], rule)
    try:
        with (database(pg_server, demo=True) as db, Webhook() as webhook,
              ExporterProcess(db.url, poll_interval=1.0) as exporter):
            (folder / "alertmanager.yml").write_text(json.dumps(alertmanager_config(webhook)))
            alertmanager = Daemon("prometheus-alertmanager", folder, lambda port, d: [
                f"--config.file={d / 'alertmanager.yml'}",
                f"--storage.path={d / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.external-url=http://127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip port on all interfaces
                "--log.level=warn",
            ])
            with alertmanager:
                prometheus_config = {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                               "evaluation_interval": "1s"},
                    "rule_files": [str(folder / "rules.yml")],
                    "alerting": {"alertmanagers": [
                        {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
                    "scrape_configs": [{
                        "job_name": JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }],
                }
                (folder / "prometheus.yml").write_text(json.dumps(prometheus_config))
                started = time.monotonic()
                prometheus = Daemon("prometheus", folder, lambda port, d: [
                    f"--config.file={d / 'prometheus.yml'}",
                    f"--storage.tsdb.path={d / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--web.external-url=http://127.0.0.1:{port}",
                    "--log.level=warn",
                ])
                with prometheus:
                    yield Stack(started, db.planted, bos_batch_ids(db.url),
                                nul_escaped_batches(db.url), rules, prometheus, alertmanager,
                                webhook)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bos_batch_ids(url: str) -> dict[int, str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        bos = {int(row.id): str(row.bos_batch_id) for row in conn.execute(
            text("SELECT id, bos_batch_id FROM cj_batch_uploads"))}
    engine.dispose()
    return bos


# --- the tests -------------------------------------------------------------------------------


def test_the_wedged_batch_pages_within_a_minute_with_its_labels_and_annotations(
        stack: Stack) -> None:
    wedged = {str(b) for b, problems in stack.planted.items() if "wedged" in problems}
    assert wedged, "the demo scenarios plant the Batch 20 wedge"

    def paged() -> list[tuple[str, float, dict[str, Any]]]:
        return [(r, at, a) for r, at, a in stack.webhook.alerts()
                if a["labels"]["alertname"] == "CJBatchWedged"]

    arrived = stack.webhook.wait_for(
        lambda: {a["labels"]["cj_batch_id"] for _, _, a in paged()} >= wedged,
        PAGE_DEADLINE_S - (time.monotonic() - stack.started))
    assert arrived, (f"no CJBatchWedged page for {wedged} within {PAGE_DEADLINE_S:.0f} s; "
                     f"received {stack.webhook.alerts()}\n{stack.prometheus.log()}\n"
                     f"{stack.alertmanager.log()}")
    rule = stack.rules["CJBatchWedged"]
    for receiver, at, alert in paged():
        batch = alert["labels"]["cj_batch_id"]
        print(f"CJBatchWedged for CJ batch {batch} reached /{receiver} "
              f"{at - stack.started:.1f} s after Prometheus started")
        assert at - stack.started < PAGE_DEADLINE_S
        assert receiver == "pager" and alert["status"] == "firing"
        assert batch in wedged
        assert alert["labels"] == {
            "alertname": "CJBatchWedged", "severity": "critical", "problem": "wedged",
            "job": JOB, "cj_batch_id": batch, "bos_batch_id": stack.bos[int(batch)],
        }
        annotations = alert["annotations"]
        assert annotations["summary"] == rule["annotations"]["summary"]
        assert annotations["description"].startswith(
            f"CJ batch {batch} (BOS batch {stack.bos[int(batch)]}) is wedged: ")
        assert "No activity for " in annotations["description"]
        assert "{{" not in annotations["description"]
        assert annotations["runbook_url"].endswith("/docs/runbooks/CJBatchWedged.md")
        assert f"var-job={JOB}&var-cj_batch_id={batch}&" in annotations["dashboard_url"]


def nul_escaped_batches(url: str) -> set[str]:
    """Batches with an essay whose metadata holds a \\u0000 escape (the demo's unreadable
    batch), read from the table's text, not through the views' cj_health_json()."""
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {str(row[0]) for row in conn.execute(text(
            "SELECT DISTINCT cj_batch_id FROM cj_processed_essays"
            " WHERE strpos(processing_metadata::text, '\\u0000') > 0"))}
    engine.dispose()
    return found


def expected_firing(stack: Stack) -> set[tuple[str, str]]:
    """(alertname, cj_batch_id) the rule pack must fire on the planted batches."""
    expected = {(PROBLEM_ALERTS[p], str(b)) for b, problems in stack.planted.items()
                for p in problems}
    # the loop scenario also has a burst of completion events within 60 s
    expected |= {("CJCompletionEventRunaway", b) for alert, b in expected
                 if alert == "CJDuplicateCompletionEvents"}
    expected |= {("CJBatchDocumentsUnreadable", b) for b in stack.unreadable}
    return expected


def test_prometheus_fires_exactly_the_planted_problems_and_nothing_on_healthy_batches(
        stack: Stack) -> None:
    expected = expected_firing(stack)

    def batch_alerts() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["cj_batch_id"]) for a in stack.firing()
                if "cj_batch_id" in a["labels"]}

    stack.prometheus.wait(lambda: batch_alerts() >= expected, 30, f"firing alerts {expected}")
    time.sleep(2)  # two more evaluations: nothing else may join
    assert batch_alerts() == expected
    firing = stack.firing()
    assert not {a["labels"]["cj_batch_id"] for a in firing if "cj_batch_id" in a["labels"]} & (
        stack.healthy())
    others = {a["labels"]["alertname"] for a in firing if "cj_batch_id" not in a["labels"]}
    # the demo's outbox: OUTBOX_FAILED rows given up, OUTBOX_PENDING more waiting behind them
    # for OUTBOX_OLDEST (exporter.demo.scenarios)
    assert others == {"CJOutboxEventsFailed", "CJOutboxBacklog"}
    assert not any(a["labels"]["alertname"].startswith("CJHealth") for a in firing)


def delivered(firing: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(receiver, alertname, cj_batch_id) Alertmanager must deliver, as the example config
    routes and inhibits them."""
    def inhibited(alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        for other in (o["labels"] for o in firing):
            same_batch = (other.get("cj_batch_id", "") == labels.get("cj_batch_id", "")
                          and other["job"] == labels["job"])
            if (labels["severity"] == "warning" and other["severity"] == "critical"
                    and same_batch and (other.get("cj_batch_id")
                                        or other["alertname"] == labels["alertname"])):
                return True
            if (labels["alertname"] == "CJBatchStuckScoring"
                    and other["alertname"] == "CJBatchWedged" and same_batch):
                return True
            if (labels["alertname"] == "CJBatchWedged"
                    and other["alertname"] == "CJManyBatchesWedged"
                    and other["job"] == labels["job"]):
                return True
        return False

    return {(RECEIVERS[a["labels"]["severity"]], a["labels"]["alertname"],
             a["labels"].get("cj_batch_id", "")) for a in firing if not inhibited(a)}


def test_alertmanager_routes_by_severity_inhibits_and_sends_nothing_for_healthy_batches(
        stack: Stack) -> None:
    stack.prometheus.wait(lambda: {(a["labels"]["alertname"], a["labels"]["cj_batch_id"])
                                   for a in stack.firing() if "cj_batch_id" in a["labels"]}
                          >= expected_firing(stack), 30, "the planted problems firing")
    expected = delivered(stack.firing())
    # the Batch 20 wedge's anchor and projection warnings are inhibited by its page
    assert not any(alert == "CJAnchorFlagMismatch" for _, alert, _ in expected)

    def received() -> set[tuple[str, str, str]]:
        return {(receiver, a["labels"]["alertname"], a["labels"].get("cj_batch_id", ""))
                for receiver, _, a in stack.webhook.alerts()}

    assert stack.webhook.wait_for(lambda: received() >= expected, 20), (
        f"missing notifications {expected - received()}\n{stack.alertmanager.log()}")
    time.sleep(2.5)  # two more group intervals: nothing else may arrive
    assert received() == expected, f"unexpected notifications: {received() - expected}"
    assert not {b for _, _, b in received()} & stack.healthy()
    assert all(a["status"] == "firing" for _, _, a in stack.webhook.alerts())
