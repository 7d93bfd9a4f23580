"""The package's shape: no import cycle anywhere under exporter/ (function-level imports
included), the CLI is imported by nobody, and the core never imports the finalizer except
behind the remediation switch (exporter.service and the remediate command import it lazily)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every exporter module `path` imports, at module level or inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("exporter"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("exporter"):
                continue
            for alias in node.names:  # `from exporter.x import y`: y may be a module
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in MODULES else base


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): {m for m in imports(p) if m in MODULES and m != module_name(p)}
         for p in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["exporter.vocabulary"].add("exporter.cli")  # cli -> ... -> vocabulary -> cli
    assert find_cycle(planted) is not None


def test_function_level_imports_are_in_the_graph() -> None:
    # cli imports exporter.service inside cmd_serve only: the walker must still see it.
    assert "exporter.service" in GRAPH["exporter.cli"]


def test_nobody_imports_the_cli() -> None:
    assert [m for m, deps in GRAPH.items() if "exporter.cli" in deps] == ["exporter.__main__"]


CORE_MAY_IMPORT_FINALIZER = {"exporter.service", "exporter.commands.remediate",
                             "exporter.commands.install_view", "exporter.demo.command"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                           if not m.startswith("exporter.finalizer")))
def test_the_core_reaches_the_finalizer_only_behind_the_switch(module: str) -> None:
    reaches = {d for d in GRAPH[module] if d.startswith("exporter.finalizer")}
    if module not in CORE_MAY_IMPORT_FINALIZER:
        assert not reaches, f"{module} imports {sorted(reaches)}"
