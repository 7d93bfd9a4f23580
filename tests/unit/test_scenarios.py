"""The demo's named figures (exporter.demo.scenarios) are the ones its scenarios plant: tests in
every tier assert on the constants, so a scenario changed without its constant fails here."""

from __future__ import annotations

from exporter.demo import scenarios
from exporter.demo.scenarios import DEMO_SCENARIOS, BatchSpec
from exporter.vocabulary import PROBLEMS


def test_batch_defaults_are_the_named_figures() -> None:
    spec = BatchSpec()
    assert spec.students == scenarios.STUDENTS
    assert spec.budget == spec.submitted == spec.completed == scenarios.COMPARISONS


def test_the_scenarios_plant_the_named_figures() -> None:
    wedge, wedge_problems = DEMO_SCENARIOS["batch20_wedge"]
    assert wedge.idle == scenarios.BATCH20_IDLE and wedge.anchor_grades == scenarios.GRADES
    assert not wedge.anchors_flagged and "wedged" in wedge_problems
    runaway, runaway_problems = DEMO_SCENARIOS["runaway_completion"]
    assert runaway.completion_runs == scenarios.RUNAWAY_COMPLETION_RUNS
    assert runaway.burst_spacing == scenarios.RUNAWAY_BURST_SPACING
    # the whole loop within the 6 s of the production incident
    assert (runaway.burst_spacing * (runaway.completion_runs - 1)).total_seconds() < 6
    assert runaway_problems == {"duplicate_completion", "duplicate_charge"}
    assert scenarios.RUNAWAY_DUPLICATES == scenarios.RUNAWAY_COMPLETION_RUNS - 1
    assert scenarios.OUTBOX_UNPUBLISHED == scenarios.OUTBOX_PENDING + scenarios.OUTBOX_FAILED


def test_every_problem_kind_is_planted_by_some_scenario() -> None:
    planted = set().union(*(problems for _, problems in DEMO_SCENARIOS.values()))
    assert planted == set(PROBLEMS)
