"""README's settings table is exactly the settings exporter/config.py declares.

One row per declaration, in declaration order (`remediation.*` included): the YAML key, the
environment variable, the flag (as the real argument parser of exporter/cli.py accepts it, with
the commands other than `serve` that take it), the default as YAML spells it, and the help text.
On a difference the failure prints the whole expected table, ready to paste.
"""

from __future__ import annotations

import argparse
from typing import Any

from exporter import cli, config
from tests.support.paths import ROOT

README = ROOT / "README.md"
HEADER = "| setting (YAML) | env | flag | default | meaning |"


def default_text(value: Any) -> str:
    """A default as it is written in YAML: 15 (not 15.0), true, [] left empty, None empty."""
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, tuple):
        return f"`{', '.join(value)}`"
    return f"`{value}`"


def commands_by_flag() -> dict[str, list[str]]:
    """flag -> the subcommands whose parser accepts it."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out: dict[str, list[str]] = {}
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            for flag in action.option_strings:
                out.setdefault(flag, []).append(command)
    return out


def flag_text(d: config.Declaration, commands: dict[str, list[str]]) -> str:
    if not d.flag:
        return ""
    where = commands.get(d.flag, [])
    assert where, f"{d.key}: flag {d.flag} is declared but no command accepts it"
    if "serve" in where:
        return f"`{d.flag}`"
    return f"`{d.flag}` ({', '.join(f'`{c}`' for c in where)})"


def meaning(d: config.Declaration) -> str:
    if d.choices and not all(c in d.help for c in d.choices):
        return f"{d.help}: {', '.join(d.choices)}"
    return d.help


def row(*cells: str) -> str:
    """A table row; an empty cell is `| |`, as in the rest of the README."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def expected_rows() -> list[str]:
    commands = commands_by_flag()
    return [row(f"`{d.key}`", f"`{d.env}`", flag_text(d, commands), default_text(d.default),
                meaning(d))
            for d in config.declarations()]


def readme_rows() -> list[str]:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines.count(HEADER) == 1, f"README.md needs exactly one table headed {HEADER}"
    start = lines.index(HEADER) + 2  # after the header and the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_readme_settings_table_is_the_declarations() -> None:
    expected = expected_rows()
    table = "\n".join([HEADER, "|---|---|---|---|---|", *expected])
    assert readme_rows() == expected, f"README.md's settings table should be:\n\n{table}\n"


def test_the_table_covers_every_setting_and_the_remediation_ones() -> None:
    keys = [row.split("`")[1] for row in readme_rows()]
    assert keys == [d.key for d in config.declarations()]
    assert "remediation.write_dsn" in keys and "remediation.max_wedged_for_auto" in keys
    assert "`--write-dsn` (`remediate`)" in "\n".join(readme_rows())


def test_defaults_are_written_as_yaml_would() -> None:
    assert default_text(15.0) == "`15`"
    assert default_text(0.5) == "`0.5`"
    assert default_text(True) == "`true`"
    assert default_text(None) == default_text(()) == ""
    assert default_text(":10124") == "`:10124`"
