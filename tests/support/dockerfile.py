"""The root Dockerfile read as instructions (for the image tests of tests/unit/ and the
HEALTHCHECK run against a real exporter in tests/stack/test_compose.py)."""

from __future__ import annotations

import re

from tests.support.paths import ROOT


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the root Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]

