"""Figures a test wants in the pytest summary (e.g. how many fuzzed inputs it tried), printed by
tests/conftest.py's pytest_terminal_summary, so CI logs show them without `-s`."""

from __future__ import annotations

LINES: list[str] = []


def add(line: str) -> None:
    LINES.append(line)
