"""The dashboards name the problem kinds of exporter/vocabulary.py: dashboards/cjdash.py reads
them from there, and the panels that list them in their description list every one, in the
vocabulary's order (a new problem kind shows up here until the descriptions name it)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from exporter.vocabulary import PROBLEM_KINDS
from tests.support.paths import ROOT

DASHBOARDS = ROOT / "dashboards"
# (dashboard, panel title) of the panels whose description lists every problem kind
LISTING_PANELS = [("batch.json", "Problems"), ("overview.json", "Batches with problems")]


def panel(board: str, title: str) -> dict[str, Any]:
    data = json.loads((DASHBOARDS / board).read_text(encoding="utf-8"))
    (found,) = [p for p in data["panels"] if p["title"] == title]
    return found  # type: ignore[no-any-return]


def test_cjdash_takes_the_problem_labels_from_the_vocabulary() -> None:
    sys.path.insert(0, str(DASHBOARDS))
    try:
        import cjdash
    finally:
        sys.path.remove(str(DASHBOARDS))
    assert tuple(cjdash.PROBLEMS) == tuple(kind.label for kind in PROBLEM_KINDS)


@pytest.mark.parametrize(("board", "title"), LISTING_PANELS)
def test_panels_that_list_the_problem_kinds_list_every_one(board: str, title: str) -> None:
    listing = ", ".join(kind.label for kind in PROBLEM_KINDS)
    assert listing in panel(board, title)["description"], (
        f"{board} {title!r}: name every problem kind of exporter/vocabulary.py, in order")
