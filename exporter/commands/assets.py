"""`assets [NAME] [--write DIR]`: where the shipped rules, dashboards and roles.sql are.

Without arguments: one line per file (name, path, what it is). With NAME: only its path, for
`psql -f "$(cj-health-exporter assets roles.sql)"`. With --write DIR: copies every file into
DIR/<alerts|dashboards|sql>/ and prints the paths written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from exporter.assets import ASSETS, BY_NAME
from exporter.errors import OperatorError


def run(name: str | None, write: str | None) -> int:
    if name is not None:
        if name not in BY_NAME:
            raise OperatorError(f"no asset named {name!r} (one of {', '.join(BY_NAME)})")
        print(BY_NAME[name].path())
        return 0
    if write is not None:
        for asset in ASSETS:
            target = Path(write) / asset.group / asset.name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(asset.path(), target)
            except OSError as exc:
                raise OperatorError(f"cannot write {target}: {exc.strerror}") from None
            print(target)
        return 0
    width = max(len(a.name) for a in ASSETS)
    for asset in ASSETS:
        print(f"{asset.name:<{width}}  {asset.path()}  ({asset.what})")
    return 0
