"""The alert specs (alerts/cjalerts.py): one per alert, each with its runbook and its promtool
cases both ways, problem kinds named and graded by exporter/vocabulary.py, every declared
threshold used, and the committed rule file and runbook index what the generator writes.

The recipe for adding an alert is the docstring of alerts/cjalerts.py; these tests fail when a
step of it is missing. No promtool here: tests/stack/test_alerts_rules.py runs the cases.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from exporter.vocabulary import PROBLEM_KINDS, ProblemKind
from tests.support.paths import ROOT
from tests.support.process import load_module

ALERTS = ROOT / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks"

gen = load_module("cj_alerts_generate", ALERTS / "generate.py")
cjalerts = sys.modules["cjalerts"]  # the module generate.py imported (one registry of specs)
SPECS = gen.specs()


@functools.cache
def params() -> Any:
    return gen.validate(gen.load_params(ALERTS / "params.yml"))


@functools.cache
def promtool_cases() -> tuple[tuple[str, bool], ...]:
    """(alertname, fires) of every alert_rule_test of alerts/tests/*.test.yml."""
    return tuple(_cases())


def _cases() -> Iterator[tuple[str, bool]]:
    for path in sorted((ALERTS / "tests").glob("*.test.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def test_the_pack_has_specs_and_each_alert_is_declared_once() -> None:
    names = [spec.name for spec in SPECS]
    assert len(names) >= 18 and len(set(names)) == len(names)
    rules = yaml.safe_load((ALERTS / "cj-batch-health.rules.yml").read_text(encoding="utf-8"))
    in_file = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert list(dict.fromkeys(in_file)) == names, "the rule file lists the specs in their order"


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_every_spec_has_a_runbook_and_promtool_cases_that_fire_and_stay_silent(
        name: str) -> None:
    assert (RUNBOOKS / f"{name}.md").is_file(), f"write docs/runbooks/{name}.md"
    cases = [fires for alertname, fires in promtool_cases() if alertname == name]
    assert True in cases, f"no case in alerts/tests/ where {name} fires"
    assert False in cases, f"no case in alerts/tests/ where {name} stays silent"


def test_problem_alerts_take_name_and_severity_from_the_vocabulary() -> None:
    by_problem = {spec.problem: spec for spec in SPECS if spec.problem}
    assert set(by_problem) == {kind.label for kind in PROBLEM_KINDS}
    p = params()
    for kind in PROBLEM_KINDS:
        spec = by_problem[kind.label]
        assert spec.name == kind.alert and spec.per_batch
        (rule,) = spec.rules(cjalerts.Context(p.deployment(), p.thresholds(spec)))
        assert rule.severity == kind.severity, kind.label
        assert f'cj_batch_problem:max{{problem="{kind.label}"}}' in rule.expr


def test_a_problem_kind_without_an_alert_spec_stops_the_generator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    new = ProblemKind("orphaned_runs", "has_orphaned_runs", "runs nobody owns", "warning",
                      "CJBatchOrphanedRuns")
    monkeypatch.setattr(cjalerts, "PROBLEM_KINDS", (*PROBLEM_KINDS, new))
    with pytest.raises(gen.ParamsError, match="orphaned_runs \\(CJBatchOrphanedRuns\\)"):
        gen.render(gen.load_params(ALERTS / "params.yml"))


def test_an_alert_declared_twice_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    group = cjalerts.GROUPS[1]
    monkeypatch.setattr(group, "specs", [*group.specs, SPECS[0]])
    with pytest.raises(gen.ParamsError, match=f"declared twice.*{SPECS[0].name}"):
        gen.render(gen.load_params(ALERTS / "params.yml"))


class ReadThresholds(cjalerts.Thresholds):  # type: ignore[name-defined,misc]
    """Thresholds that remember which keys a spec read."""

    def __init__(self, alert: str, values: dict[str, Any]) -> None:
        super().__init__(alert, values)
        self.read: set[str] = set()

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return super()._get(key)


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_every_threshold_a_spec_declares_is_one_it_reads(spec: Any) -> None:
    read = ReadThresholds(spec.name, dict(spec.thresholds))
    context = cjalerts.Context(params().deployment(), read)
    rules = list(spec.rules(context))
    list(spec.records(context))
    assert rules
    assert read.read == set(spec.thresholds), f"{spec.name}: declared but unused thresholds"


def test_overrides_reach_only_the_alert_they_name() -> None:
    raw = gen.load_params(ALERTS / "params.yml")
    raw["overrides"] = {"CJBatchWedged": {"for": "25m"}}
    p = gen.validate(raw)
    wedged = next(s for s in SPECS if s.name == "CJBatchWedged")
    scoring = next(s for s in SPECS if s.name == "CJBatchStuckScoring")
    assert p.thresholds(wedged).duration("for") == "25m"
    assert p.thresholds(scoring).duration("for") == scoring.thresholds["for"] == "10m"
    assert wedged.thresholds["for"] == "10m", "the spec's default is not changed"


def test_every_rule_gets_both_links_in_the_final_pass() -> None:
    pack = gen.build(params())
    alerts = [r for g in pack["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for rule in alerts:
        assert list(rule["annotations"]) == ["summary", "description", "runbook_url",
                                             "dashboard_url"], rule["alert"]
    assert not any("runbook_url" in str(dataclasses.astuple(rule))
                   for spec in SPECS
                   for rule in spec.rules(cjalerts.Context(params().deployment(),
                                                           params().thresholds(spec))))


def test_committed_rules_and_runbook_index_are_what_the_generator_writes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--check"]) == 0, capsys.readouterr().err
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    assert gen.runbook_index((ALERTS / "cj-batch-health.rules.yml").read_text(encoding="utf-8"),
                             index) == index
    for spec in SPECS:
        assert f"| [{spec.name}]({spec.name}.md) |" in index
