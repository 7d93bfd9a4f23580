"""What the wheel and the image carry, read from pyproject.toml, the Dockerfile and .dockerignore
(no Docker engine runs here: tests/process/test_wheel_walk.py builds and installs the real
wheel; tests/process/test_day_one.py runs the Dockerfile's HEALTHCHECK command)."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from exporter.assets import ASSETS, PACKAGE
from tests.support.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OCI = ("title", "description", "version", "revision", "created", "licenses", "source",
       "base.name")


def test_every_asset_is_force_included_where_the_assets_command_looks() -> None:
    included = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for asset in ASSETS:
        source = f"{asset.group}/{asset.name}"
        assert (ROOT / source).is_file(), source
        shipped = asset.candidates()[0].relative_to(PACKAGE.parent).as_posix()
        assert included.get(source) == shipped or (
            asset.group == "sql" and included.get("sql") == "exporter/sql"), source
    for json_file in (ROOT / "dashboards").glob("*.json"):
        assert any(a.name == json_file.name for a in ASSETS), f"{json_file.name} not shipped"


def test_the_image_build_sees_the_assets() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def sent(path: str) -> bool:  # Docker's rule: the last matching line wins
        verdict = True
        for rule in ignore:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                verdict = negated
        return verdict

    for asset in ASSETS:
        path = f"{asset.group}/{asset.name}"
        assert sent(path), f".dockerignore keeps {path} out of the build context"
        if asset.group != "sql":
            assert re.search(rf"^COPY [^\n]*{re.escape(path)}", DOCKERFILE, re.M), path


def test_the_image_has_oci_labels_and_the_healthcheck_subcommand() -> None:
    for label in OCI:
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE, label
    default = re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE, re.M)
    assert default and default.group(1) == PYPROJECT["project"]["version"]
    assert 'CMD ["cj-health-exporter", "healthcheck"]' in DOCKERFILE
    assert "urllib.request" not in DOCKERFILE  # the old probe: 401 under basic auth
