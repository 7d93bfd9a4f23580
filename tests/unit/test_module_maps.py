"""The module maps name every module, and nothing that is not one: exporter/__init__.py (each
top-level module and package), each package's own docstring (its modules), docs/design.md's
"Every module and its one job" (every module of the package and every SQL file under sql/), and
tests/support/__init__.py (the shared test helpers). A module added, moved or deleted without
its line in the maps fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PACKAGE = ROOT / "exporter"
SUPPORT = ROOT / "tests" / "support"
SQL = ROOT / "sql"
DESIGN = ROOT / "docs" / "design.md"
SECTION = "### Every module and its one job"
# Modules missing from a package map that another engineer owns this wave (it may not be edited
# from here): (package, module). Drop an entry when the map is fixed.
OWNED_ELSEWHERE: set[tuple[str, str]] = set()  # (package, module) another owner must list


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def packages() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def children(package: Path) -> set[str]:
    """The modules (and packages, with a trailing /) directly inside `package`."""
    names = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    return names | {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}


def named(doc: str) -> set[str]:
    """What a map names: the first word of each line of its list (`- cli   ...` or an indented
    `watched   ...` under a package's entry)."""
    return set(re.findall(r"^\s*(?:- )?([\w]+/?)\s{2,}\S", doc, flags=re.M))


def test_the_map_pattern() -> None:
    doc = "Intro text here.\n\n- cli    parse\n- poll/  the core:\n    watched   which\n"
    assert named(doc) == {"cli", "poll/", "watched"}


def test_the_top_level_map_names_every_module_and_package() -> None:
    listed = set(re.findall(r"^- (\w+/?)\s", docstring(PACKAGE / "__init__.py"), flags=re.M))
    expected = children(PACKAGE)
    assert listed == expected, (f"missing: {sorted(expected - listed)}; "
                                f"not modules: {sorted(listed - expected)}")


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_each_package_map_names_its_modules(package: Path) -> None:
    listed = named(docstring(package / "__init__.py"))
    expected = children(package) - {n for p, n in OWNED_ELSEWHERE if p == package.name}
    assert expected <= listed, f"missing from {package.name}/__init__.py: {expected - listed}"
    assert listed <= children(package), f"not modules: {listed - children(package)}"


def design_table() -> set[str]:
    text = DESIGN.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ")]
    return set(re.findall(r"^\| `([^`]+\.(?:py|sql))` \|", section, flags=re.M))


def test_design_lists_every_module_and_sql_file() -> None:
    # A package's __init__.py holds its map only; the package itself is listed by its modules.
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.parent == PACKAGE or p.name != "__init__.py"}
    sql = {str(p.relative_to(SQL)) for p in SQL.rglob("*.sql")}
    listed, files = design_table(), modules | sql
    assert listed == files, (f"missing: {sorted(files - listed)}; "
                             f"not files: {sorted(listed - files)}")


def test_the_test_support_map_names_every_helper() -> None:
    listed = set(re.findall(r"^- (\w+)\s", docstring(SUPPORT / "__init__.py"), flags=re.M))
    expected = {p.stem for p in SUPPORT.glob("*.py") if p.name != "__init__.py"}
    assert listed == expected, (f"missing: {sorted(expected - listed)}; "
                                f"not modules: {sorted(listed - expected)}")
