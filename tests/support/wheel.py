"""The built wheel in a fresh virtualenv outside the checkout, as an operator installs it.

Built once per session with `pip wheel` (hatchling in pip's isolated build env) and installed
with pip, whose caches make a second install cheap. Commands run with a PATH that holds the
venv's bin/ first, then pgserver's psql, then the system's tools (jq, curl), and with no
PYTHONPATH: nothing of the checkout can leak in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.hardening import psql_binary
from tests.support.paths import ROOT


def build_wheel(out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(out.glob("cj_health_exporter-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


@dataclass
class Venv:
    root: Path
    home: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        path = f"{self.bin}:{Path(psql_binary()).parent}:/usr/bin:/bin"
        return {"PATH": path, "HOME": str(self.home), "LANG": "C.UTF-8", **extra}

    def pip_install(self, requirement: str) -> None:
        result = subprocess.run(
            [str(self.bin / "pip"), "install", "-q", "--disable-pip-version-check",
             requirement], capture_output=True, text=True, timeout=900,
            env={**os.environ, "PIP_NO_INPUT": "1"})
        assert result.returncode == 0, result.stdout + result.stderr

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), cwd=cwd or self.home,
                              stdin=subprocess.DEVNULL)


def fresh_venv(folder: Path) -> Venv:
    """`python -m venv` in `folder` (which must lie outside the checkout)."""
    assert ROOT not in folder.resolve().parents, f"{folder} is inside the checkout"
    result = subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    home = folder / "home"
    home.mkdir()
    return Venv(folder / "venv", home)
