"""Log lines as Prometheus exporters write them: logfmt (the default) or one JSON object per line.

`--log.level` and `--log.format` (settings `log_level`, `log_format`) follow the
exporter-toolkit's promslog flags. Every line carries `ts` (RFC 3339, UTC, milliseconds),
`level`, `logger` and `msg`; an exception adds `err` as one escaped string, so a traceback never
spans lines and a log shipper never splits it.

Messages are written not to hold passwords (exporter.config.redact), and this module is the
last wall behind that rule: whatever reaches a handler passes `scrub()`, which masks the
password of any `scheme://user:password@` URL and any libpq `password=...` keyword.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s@/]+@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)")
# Chatty libraries: their INFO lines are not for operators.
QUIET = ("pgserver",)


def scrub(text: str) -> str:
    """Mask passwords in URLs and libpq keyword strings."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    fields = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
              "logger": record.name, "msg": scrub(record.getMessage())}
    if record.exc_info:
        fields["err"] = scrub(formatter.formatException(record.exc_info))
    return fields


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\r\t'):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


FORMATTERS: dict[str, type[logging.Formatter]] = {"logfmt": LogfmtFormatter,
                                                   "json": JsonFormatter}


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a second setup() replaces it and leaves other handlers alone."""


def setup(level: str, fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Route every logger to stderr in `fmt` at `level` (replacing an earlier setup)."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)

