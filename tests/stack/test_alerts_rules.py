"""The alert rule pack: generated from its parameters, valid for promtool and amtool, unit-tested
alert by alert, documented by a runbook each, and routed by severity.

Needs the Debian `prometheus` (promtool) and `prometheus-alertmanager` (amtool) packages, which
.ci/test.sh installs.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.process import load_module, selectors

ALERTS = ROOT / "alerts"
RULES = ALERTS / "cj-batch-health.rules.yml"
PARAMS = ALERTS / "params.yml"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))
AM_CONFIG = ALERTS / "alertmanager.example.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"

gen = load_module("cj_alerts_generate", ALERTS / "generate.py")

# The alerts are the specs of alerts/cjalerts.py (one each); the runbook test below fails on a
# runbook page without a spec, so a spec deleted by mistake does not go unnoticed.
EXPECTED_ALERTS = {spec.name for spec in gen.specs()}
PER_BATCH = {spec.name for spec in gen.specs() if spec.per_batch}
RUNBOOK_URL_BASE = ("https://github.com/cj-health-exporter/cj-health-exporter/blob/main/"
                    "docs/runbooks/")
RECEIVER_BY_SEVERITY = {"critical": "pager", "warning": "ticket", "info": "null"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is required: .ci/test.sh installs the Debian package providing it"
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                          check=False)


def rule_groups(text: str | None = None) -> list[dict[str, Any]]:
    data = yaml.safe_load(text if text is not None else RULES.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = data["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Names of every vector selector in a PromQL expression."""
    return {selector.name for selector in selectors(expr)}


def params() -> dict[str, Any]:
    raw: dict[str, Any] = gen.load_params(PARAMS)
    return raw


# --- generated from the parameters -----------------------------------------------------------


def test_committed_rules_are_exactly_what_the_generator_writes() -> None:
    assert RULES.read_text(encoding="utf-8") == gen.render(params()), (
        "alerts/cj-batch-health.rules.yml is out of date: run `python alerts/generate.py`")


def test_check_mode_fails_on_a_stale_file_and_passes_on_a_fresh_one(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("for: 10m", "for: 6h"))
    assert gen.main(["--check", "--output", str(out)]) == 1


def test_a_deployment_overrides_thresholds_and_selectors_in_the_parameters(
        tmp_path: Path) -> None:
    raw = params()
    raw["overrides"] = {"CJBatchStuckWaitingCallbacks": {"critical_idle": "3h"},
                        "CJCompletionEventRunaway": {"burst": 10}}
    raw["job"] = "cj-exporter-eu"
    raw["extra_selector"] = 'cluster="eu-1"'
    text = gen.render(raw)
    assert "> 10800" in text and "> 7200" not in text and "> 3600" in text
    assert "cj_batch_completion_event_burst:max > 10)" in text
    assert 'absent(up{job="cj-exporter-eu", cluster="eu-1"})' in text
    assert 'job="cj-health-exporter"' not in text
    (tmp_path / "r.yml").write_text(text)
    result = run(tool("promtool"), "check", "rules", tmp_path / "r.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_params_of_another_folder_resolve_its_dashboards_dir(tmp_path: Path) -> None:
    """`--params elsewhere.yml`: links.dashboards_dir is relative to that file."""
    raw = params()
    raw["links"]["dashboards_dir"] = "boards"
    shutil.copytree(ROOT / "dashboards", tmp_path / "boards",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (tmp_path / "p.yml").write_text(yaml.safe_dump(raw))
    assert gen.main(["--params", str(tmp_path / "p.yml"), "-o", str(tmp_path / "r.yml")]) == 0
    assert (tmp_path / "r.yml").read_text() == RULES.read_text(encoding="utf-8")


def mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return apply


@pytest.mark.parametrize(("change", "message"), [
    (mutate("overrides.CJBatchWedged.for", "10 minutes"), "not a Prometheus duration"),
    (mutate("overrides.CJBatchWedged.fro", "10m"), "unknown key(s) ['fro']"),
    # a problem kind's severity is the vocabulary's, not a deployment's
    (mutate("overrides.CJBatchWedged.severity", "page"), "unknown key(s) ['severity']"),
    (mutate("overrides.CJBatchWedgd", {"for": "1m"}), "overrides: unknown key(s) ['CJBatchWedgd']"),
    (mutate("overrides.CJCompletionEventRunaway.burst", 0), "positive integer"),
    (mutate("overrides.CJCompletionEventRunaway.burst", "3"), "positive integer"),
    (mutate("overrides.CJOutboxBacklog.warning_oldest_age", "soon"), "not a Prometheus duration"),
    (mutate("overrides.CJHealthRemediationFailing.outcomes", ["failed", "exploded"]),
     "are not remediation outcomes"),
    (mutate("overrides", ["CJBatchWedged"]), "overrides: expected a mapping"),
    (mutate("upstream_batch_timeout", KeyError), "missing key(s) ['upstream_batch_timeout']"),
    (mutate("alerts", {}), "unknown key(s) ['alerts']"),
    (mutate("keep_firing_for", ""), "not a Prometheus duration"),
    (mutate("replica_labels", []), "replica_labels"),
    (mutate("links.batch_dashboard_uid", "nope"), "no dashboard with uid 'nope'"),
])
def test_invalid_parameters_are_rejected_with_a_clear_message(
        change: Callable[[dict[str, Any]], None], message: str) -> None:
    raw = copy.deepcopy(params())
    change(raw)
    with pytest.raises(gen.ParamsError, match=re.escape(message)):
        gen.render(raw)


def test_a_panel_renamed_in_the_dashboards_breaks_the_generation(tmp_path: Path) -> None:
    board = json.loads((ROOT / "dashboards" / "batch.json").read_text(encoding="utf-8"))
    for panel in board["panels"]:
        if panel["title"] == "Problems":
            panel["title"] = "Batch problems"
    (tmp_path / "batch.json").write_text(json.dumps(board))
    shutil.copy(ROOT / "dashboards" / "overview.json", tmp_path / "overview.json")
    raw = params()
    raw["links"]["dashboards_dir"] = str(tmp_path)
    with pytest.raises(gen.ParamsError, match=re.escape(
            "CJBatchWedged.panel: dashboard 'cj-health-batch' has 0 panels titled 'Problems'")):
        gen.render(raw)


def test_command_line_for_override_writes_a_short_copy(tmp_path: Path) -> None:
    out = tmp_path / "short.yml"
    assert gen.main(["--for", "0s", "--output", str(out)]) == 0
    alerts = [r for g in rule_groups(out.read_text()) for r in g["rules"] if "alert" in r]
    assert alerts and all("for" not in r for r in alerts)
    assert gen.main(["--for", "soon", "--output", str(out)]) == 2


def test_keep_firing_for_0s_leaves_it_out_for_prometheus_before_2_42() -> None:
    raw = params()
    raw["keep_firing_for"] = "0s"
    assert "keep_firing_for" not in gen.render(raw)
    assert "keep_firing_for: 10m" in RULES.read_text(encoding="utf-8")


def test_for_override_can_keep_the_for_of_named_alerts() -> None:
    short = rule_groups(gen.render(gen.override_for(params(), "0s", keep={"CJHealthPollStale"})))
    fors = {r["alert"]: r.get("for") for g in short for r in g["rules"] if "alert" in r}
    assert fors["CJHealthPollStale"] == "1m"
    assert fors["CJBatchWedged"] is None


def test_for_override_shortens_every_for_and_keeps_the_rest() -> None:
    short = rule_groups(gen.render(gen.override_for(params(), "0s")))
    full = rule_groups()
    short_alerts = [r for g in short for r in g["rules"] if "alert" in r]
    full_alerts = [r for g in full for r in g["rules"] if "alert" in r]
    assert [r["alert"] for r in short_alerts] == [r["alert"] for r in full_alerts]
    assert all("for" not in r for r in short_alerts)
    assert any("for" in r for r in full_alerts)
    for s, f in zip(short_alerts, full_alerts, strict=True):
        assert (s["expr"], s["labels"], s["annotations"]) == (f["expr"], f["labels"],
                                                              f["annotations"])


# --- promtool and amtool ---------------------------------------------------------------------


def test_promtool_check_rules_is_clean() -> None:
    result = run(tool("promtool"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "lint" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert len(UNIT_TESTS) >= 5
    result = run(tool("promtool"), "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


@pytest.mark.parametrize(("change", "alertname", "unit_test"), [
    # a later page
    (lambda t: t.replace("for: 10m\n    keep_firing_for", "for: 11m\n    keep_firing_for", 1),
     "CJBatchWedged", "batch-problems"),
    # a threshold moved by one unit
    (lambda t: t.replace("cj_batch_completion_event_burst:max > 3)",
                         "cj_batch_completion_event_burst:max > 4)"), "CJCompletionEventRunaway",
     "thresholds"),
    # no keep_firing_for: the exporter restart resolves the page
    (lambda t: t.replace("    keep_firing_for: 10m\n", ""), "CJBatchWedged", "replicas-and-gaps"),
    # per-replica alerts
    (lambda t: t.replace("max without (instance, pod) (cj_batch_problem",
                         "max without (pod) (cj_batch_problem"), "CJBatchWedged",
     "replicas-and-gaps"),
    # the dangerous absent() form that loses the job label
    (lambda t: t.replace('absent(up{job="cj-health-exporter"})',
                         'absent(up{job="cj-health-exporter"} == 1)'), "CJHealthExporterDown",
     "exporter"),
])
def test_the_unit_tests_catch_a_broken_rule(
        tmp_path: Path, change: Callable[[str], str], alertname: str, unit_test: str) -> None:
    original = RULES.read_text(encoding="utf-8")
    broken = change(original)
    assert broken != original
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / "tests").mkdir()
    test = ALERTS / "tests" / f"{unit_test}.test.yml"
    shutil.copy(test, tmp_path / "tests" / test.name)
    result = run(tool("promtool"), "test", "rules", tmp_path / "tests" / test.name)
    assert result.returncode != 0
    assert f"alertname: {alertname}," in result.stdout + result.stderr
    assert run(tool("promtool"), "test", "rules", test).returncode == 0  # it is the change


def test_amtool_check_config_is_clean() -> None:
    result = run(tool("amtool"), "check-config", AM_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_routes_every_alert_by_its_severity() -> None:
    for rule in alert_rules():
        severity = rule["labels"]["severity"]
        labels = [f"alertname={rule['alert']}", f"severity={severity}", "cj_batch_id=20",
                  "job=cj-health-exporter"]
        result = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}",
                     *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == RECEIVER_BY_SEVERITY[severity], (rule["alert"], result)
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}",
                 "alertname=SomethingNew")
    assert result.stdout.strip() == "ticket", "an alert without severity must not be dropped"
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}",
                 "alertname=SomethingNew", "severity=info")
    assert result.stdout.strip() == "null", "info is not routed"


def test_alertmanager_config_groups_by_batch_and_inhibits_batch_alerts() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    assert config["route"]["group_by"] == ["alertname", "cj_batch_id"]
    inhibits = config["inhibit_rules"]
    assert all("name" not in rule for rule in inhibits), "Alertmanager 0.25 has no `name`"
    down = [r for r in inhibits if any("CJHealthExporterDown" in m for m in r["source_matchers"])]
    assert down and 'alertname=~"CJ.+"' in down[0]["target_matchers"]


# --- every alert: tested, labelled, annotated, documented ------------------------------------


def unit_test_cases() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(alertname, exp_alerts) of every alert_rule_test of every unit test file."""
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                yield case["alertname"], case.get("exp_alerts") or []


def test_the_pack_has_exactly_the_expected_alerts() -> None:
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: dict[str, set[str]] = {}
    silent: set[str] = set()
    for alertname, expected in unit_test_cases():
        if expected:
            firing.setdefault(alertname, set()).update(
                str(a["exp_labels"]["severity"]) for a in expected)
        else:
            silent.add(alertname)
    for rule in alert_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        assert severity in firing.get(name, set()), f"no unit test where {name} fires ({severity})"
        assert name in silent, f"no unit test where {name} stays silent"


def test_firing_cases_check_every_label_and_annotation() -> None:
    for alertname, expected in unit_test_cases():
        for alert in expected:
            assert alert["exp_labels"].get("severity"), alertname
            assert set(alert.get("exp_annotations", {})) == {
                "summary", "description", "runbook_url", "dashboard_url"}, alertname
            if alertname in PER_BATCH:
                labels = alert["exp_labels"]
                assert {"cj_batch_id", "bos_batch_id"} <= set(labels), alertname
                assert "instance" not in labels, f"{alertname}: one alert per batch, not replica"


def test_every_alert_is_labelled_and_annotated_for_the_on_call() -> None:
    for rule in alert_rules():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in RECEIVER_BY_SEVERITY, name
        summary, description = annotations["summary"], annotations["description"]
        assert summary.endswith(".") and "{{" not in summary, f"{name}: static, ends with '.'"
        assert "$value" in description or "$labels" in description, f"{name}: templated"
        assert annotations["runbook_url"] == f"{RUNBOOK_URL_BASE}{name}.md", name
        if name in PER_BATCH:
            assert "{{ $labels.cj_batch_id }}" in description, name
            assert "{{ $labels.bos_batch_id }}" in description, name
            assert "$value" in description, f"{name}: names the figure"
            assert rule["keep_firing_for"] == params()["keep_firing_for"], name
            assert "/d/cj-health-batch?" in annotations["dashboard_url"], name
            assert "var-cj_batch_id={{ $labels.cj_batch_id }}" in annotations["dashboard_url"]
        else:
            assert "/d/cj-health-overview?" in annotations["dashboard_url"], name
        raw = {m for m in metric_names(rule["expr"]) if not m.startswith(("job", "cj_batch_id"))}
        assert raw <= {"up"}, f"{name}: reads {raw} per replica instead of a recording rule"


def test_recording_rules_follow_level_metric_operations() -> None:
    recording = [r for g in rule_groups() for r in g["rules"] if "record" in r]
    records = [r["record"] for r in recording]
    assert records
    for rule in recording:
        assert re.search(r"(max|min|sum) without \(instance, pod\)", rule["expr"]), rule
    for name in records:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name
    used = "\n".join(r["expr"] for r in alert_rules())
    for name in records:
        assert name in used or name.startswith("job_action_outcome:"), f"{name} is unused"


def test_exporter_down_keeps_the_job_label() -> None:
    down = [r["expr"] for r in alert_rules() if r["alert"] == "CJHealthExporterDown"]
    assert any('absent(up{job="cj-health-exporter"})' in expr for expr in down)
    assert any('(up{job="cj-health-exporter"}) == 0' in expr for expr in down)
    assert not any(re.search(r"absent\([^)]*==", expr) for expr in down)


def test_every_alert_has_a_runbook_an_on_call_engineer_can_follow() -> None:
    for name in EXPECTED_ALERTS:
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"missing runbook {page.relative_to(ROOT)}"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# {name}\n"), name
        for section in ("## Meaning", "## Impact", "## Confirm", "## Investigate",
                        "## Remediate", "## Escalate"):
            assert section in text, f"{name}: no {section!r} section"
        assert "cj-health-exporter inspect" in text or name.startswith("CJHealth"), name
        if name in PER_BATCH:
            assert "cj_batch_health" in text, f"{name}: the SQL to look"
            assert "--json" in text, name


def test_runbook_index_lists_every_alert() -> None:
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED_ALERTS:
        assert f"[{name}]({name}.md)" in index, name
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == EXPECTED_ALERTS, "a runbook without an alert, or the reverse"
