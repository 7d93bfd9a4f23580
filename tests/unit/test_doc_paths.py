"""Every test file the documentation names exists: README.md, docs/ (runbooks included) and the
comments of the package, the SQL, the bench and the deployment files cite tests by their path
(`tests/<tier>/test_x.py`), and a test moved into a tier or renamed must take its citations
with it. Only the path is checked, not what the sentence says the test does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# `tests/...py`, possibly followed by `::test_name`; a path inside a longer one (a URL, another
# directory) does not count. A placeholder such as tests/<tier>/ has no match.
CITED = re.compile(r"(?<![\w/.-])tests/(?:[\w-]+/)*[\w-]+\.py\b")
SUFFIXES = (".md", ".py", ".sql", ".sh", ".toml", ".yml", ".yaml", ".txt", ".tpl")
SCANNED = ("README.md", "docs", "exporter", "sql", "bench", "deploy", ".ci", "pyproject.toml",
           "docker-compose.yml", "Dockerfile")
# Stale citations in files other engineers own this wave (they may not be edited from here):
# (file, cited path) -> where the test lives now. Drop an entry when its file is fixed.
OWNED_ELSEWHERE = {
    ("docs/kubernetes.md", "tests/test_helm_chart.py"): "tests/stack/test_helm_chart.py",
}


def documents() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in sorted(path.rglob("*"))
                        if p.is_file() and p.suffix in SUFFIXES
                        and not {"node_modules", "__pycache__"} & set(p.parts))


def citations(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in CITED.finditer(line):
            yield number, match.group(0)


def test_the_scan_finds_the_citations_it_is_meant_to_check() -> None:
    found = {(str(p.relative_to(ROOT)), cited) for p in documents() for _, cited in citations(p)}
    assert ("README.md", "tests/stack/test_e2e_alerting.py") in found
    assert ("docs/design.md", "tests/unit/test_architecture.py") in found
    assert len(found) > 20


@pytest.mark.parametrize("line, expected", [
    ("see `tests/db/test_view.py::test_x` and tests/unit/test_config.py.",
     ["tests/db/test_view.py", "tests/unit/test_config.py"]),
    ("https://example.org/repo/tests/db/test_view.py and src/tests/x.py", []),
    ("tests/<tier>/ and tests/support/", []),
])
def test_citation_pattern(line: str, expected: list[str]) -> None:
    assert CITED.findall(line) == expected


def test_every_cited_test_file_exists() -> None:
    missing = []
    for path in documents():
        name = str(path.relative_to(ROOT))
        for number, cited in citations(path):
            if (ROOT / cited).is_file():
                continue
            moved = OWNED_ELSEWHERE.get((name, cited))
            if moved is not None and (ROOT / moved).is_file():
                continue
            missing.append(f"{name}:{number}: {cited}")
    assert not missing, "cited test files that do not exist:\n" + "\n".join(missing)
