"""The exporter image as the Dockerfile builds it, read without Docker: a non-root user, the
default port, a HEALTHCHECK, and a build context that holds what `pip install` needs. (The
HEALTHCHECK command runs against a real exporter in tests/stack/test_compose.py.)"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

from exporter import config as exporter_config
from tests.support.dockerfile import instructions
from tests.support.paths import ROOT


def test_dockerfile_builds_a_non_root_exporter_with_a_healthcheck() -> None:
    froms = instructions("FROM")
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    assert {f.split()[0].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"]) for f in froms} == {
        "python:3.11-slim"
    }
    (user,) = instructions("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    assert instructions("EXPOSE") == [str(exporter_config.DEFAULT_PORT)]
    (healthcheck,) = instructions("HEALTHCHECK")
    assert f"127.0.0.1:{exporter_config.DEFAULT_PORT}/healthz" in healthcheck
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["cj-health-exporter"]
    assert any("pip wheel" in run or "pip install" in run for run in instructions("RUN"))


def test_docker_build_context_holds_what_pip_install_needs() -> None:
    """Every COPY source exists and survives .dockerignore, and it covers what the wheel needs."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))

    def included(path: str) -> bool:
        keep = True
        for negated, pattern in rules:  # the last matching rule wins, as in Docker
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
                keep = negated
        return keep

    sources = []
    for copy in instructions("COPY"):
        if copy.startswith("--from"):
            continue
        sources += shlex.split(copy)[:-1]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source), f".dockerignore excludes {source}"
    assert not included(".venv") and not included(".git")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    needed = {"pyproject.toml", "exporter", "sql"} | ({readme.group(1)} if readme else set())
    assert needed <= set(sources), needed - set(sources)

