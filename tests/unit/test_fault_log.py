"""exporter.poll.warnings.FaultLog: a fault in the data is logged when it appears, reminded
every N polls while it lasts, and cleared once; never once per poll."""

from __future__ import annotations

import logging

import pytest

from exporter.poll.warnings import FaultLog


def test_warns_once_then_reminds_every_n_polls_then_clears(
        caplog: pytest.LogCaptureFixture) -> None:
    faults = FaultLog("skipping malformed cj_batch_health", "malformed rows", remind_every=5)
    with caplog.at_level(logging.INFO, logger="exporter.poll"):
        for _ in range(12):
            faults.observe({"row 7": "ValueError: timestamp is inf"})
        faults.observe({"row 7": "x", "row 9": "KeyError: 'cj_state'"})  # a new one: at once
        faults.observe({})
        faults.observe({})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "skipping malformed cj_batch_health row 7: ValueError: timestamp is inf",
        "still 1 malformed rows (row 7)",  # poll 5
        "still 1 malformed rows (row 7)",  # poll 10
        "skipping malformed cj_batch_health row 9: KeyError: 'cj_state'",
        "no malformed rows any more",
    ]


def test_many_new_faults_are_named_up_to_five(caplog: pytest.LogCaptureFixture) -> None:
    faults = FaultLog("unreadable in", "batches")
    with caplog.at_level(logging.WARNING, logger="exporter.poll"):
        faults.observe({f"batch {i}": "essay_metadata 1" for i in range(8)})
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.count("batch ") == 5 and line.endswith("(and 3 more)")
