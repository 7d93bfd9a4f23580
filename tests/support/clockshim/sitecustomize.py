"""Test helper: a wall-clock step for one Python process, without touching the host's clock.

Put this folder first on the child's PYTHONPATH and name a file in CJH_CLOCK_OFFSET_FILE: from
then on `time.time()`, `time.time_ns()`, `datetime.now()`/`utcnow()`/`today()` and
`date.today()` return the real time plus the number of seconds the file holds (re-read whenever
the file changes), as if an NTP step or a VM restore had moved the wall clock. The monotonic
clock is left alone, as the kernel leaves it when the wall clock steps. libfaketime would do
this for the whole process, but hangs here (or fails sleep() with EINVAL).

Python imports `sitecustomize` at start-up (site.py), before any module of the program, so
every later `from datetime import datetime` gets the stepped class. tests/process/
test_clock_steps.py rewrites the file while `serve` runs.
"""

from __future__ import annotations

import datetime as _datetime
import os
import time as _time

_PATH = os.environ.get("CJH_CLOCK_OFFSET_FILE")


def _install(path: str) -> None:
    real_time, real_time_ns = _time.time, _time.time_ns
    seen: list[float] = [-1.0, 0.0]  # mtime_ns of the file when read, offset in seconds

    def offset() -> float:
        try:
            mtime = float(os.stat(path).st_mtime_ns)
        except OSError:
            return seen[1]
        if mtime != seen[0]:
            try:
                with open(path, encoding="ascii") as f:
                    seen[1] = float(f.read().strip() or 0)
                seen[0] = mtime
            except (OSError, ValueError):  # caught mid-write: keep the last offset
                pass
        return seen[1]

    def time() -> float:
        return real_time() + offset()

    def time_ns() -> int:
        return real_time_ns() + int(offset() * 1e9)

    class datetime(_datetime.datetime):
        @classmethod
        def now(cls, tz: _datetime.tzinfo | None = None) -> datetime:
            return cls.fromtimestamp(time(), tz)

        @classmethod
        def utcnow(cls) -> datetime:
            return cls.fromtimestamp(time(), _datetime.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls) -> datetime:
            return cls.fromtimestamp(time())

    class date(_datetime.date):
        @classmethod
        def today(cls) -> date:
            return cls.fromtimestamp(time())

    _time.time = time
    _time.time_ns = time_ns
    _datetime.datetime = datetime  # type: ignore[misc]
    _datetime.date = date  # type: ignore[misc]


if _PATH:
    _install(_PATH)
