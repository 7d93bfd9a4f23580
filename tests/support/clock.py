"""A stepped wall clock for a child process: tests/support/clockshim/sitecustomize.py, put on
the child's PYTHONPATH, moves time.time, datetime.now and friends by the offset in a file the
test writes (the monotonic clock is left alone, as when NTP steps the clock)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.paths import ROOT

SHIM = ROOT / "tests" / "support" / "clockshim"


class Clock:
    """The offset file the child's shim reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, seconds: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{seconds}\n", encoding="ascii")
        os.replace(tmp, self.path)  # the shim never reads half a number

    def env(self) -> dict[str, str]:
        """The child's environment additions that put it on this clock."""
        return {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), str(ROOT),
                                                        os.environ.get("PYTHONPATH")])),
            "CJH_CLOCK_OFFSET_FILE": str(self.path),
        }
