"""Reading an operator's YAML file (the --config file, the web config file): one way, one set of
one-line errors that name the file and the line, never a traceback or the file's contents (it
may hold secrets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exporter.errors import OperatorError


def read(path: str | Path, where: str) -> Any:
    """The file's YAML document ({} for an empty file), or OperatorError. `where` names the file
    in messages, e.g. "config file /etc/cj-health.yml"."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise OperatorError(f"cannot read {where}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise OperatorError(f"{where} is not valid YAML{line}") from None
    return {} if data is None else data
