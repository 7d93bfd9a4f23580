"""Generate the Grafana dashboards' JSON from their grafanalib definitions.

    python dashboards/generate.py            # rewrite dashboards/*.json
    python dashboards/generate.py --check    # exit 1 if a committed JSON is out of date
    python dashboards/generate.py --out-dir DIR

Every `dashboards/<name>.dashboard.py` becomes `<name>.json`, written exactly as grafanalib's own
`generate-dashboard` writes it (sorted keys, indent 2, trailing newline), so either tool gives the
same bytes. The JSON files are committed: Grafana provisioning (docker-compose.yml) and anyone
importing a dashboard need no Python; tests/test_dashboards.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from grafanalib._gen import loader, write_dashboard

DASHBOARDS_DIR = Path(__file__).resolve().parent
SUFFIX = ".dashboard.py"


def sources(src_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    """The dashboard definitions, sorted by name."""
    return sorted(src_dir.glob("*" + SUFFIX))


def json_name(source: Path) -> str:
    """`overview.dashboard.py` -> `overview.json` (grafanalib's naming)."""
    return source.name[: -len(SUFFIX)] + ".json"


def render(source: Path) -> str:
    """The JSON text of one dashboard definition."""
    buffer = io.StringIO()
    write_dashboard(loader(str(source)), buffer)
    return buffer.getvalue()


def generate_all(out_dir: Path | str = DASHBOARDS_DIR) -> list[Path]:
    """Write `<name>.json` for every definition into `out_dir`; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources():
        target = out / json_name(source)
        # bytes, not text: no platform newline translation, the output is identical everywhere
        target.write_bytes(render(source).encode("utf-8"))
        written.append(target)
    return written


def stale(committed_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    """The JSON files in `committed_dir` that differ from what the definitions generate."""
    out = []
    for source in sources():
        target = committed_dir / json_name(source)
        if not target.is_file() or target.read_bytes() != render(source).encode("utf-8"):
            out.append(target)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate-dashboards", description="Generate dashboards/*.json from grafanalib."
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DASHBOARDS_DIR, help="where to write (default: dashboards/)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a JSON file in --out-dir is out of date",
    )
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.out_dir)
        for path in out_of_date:
            print(f"out of date: {path} (run: python dashboards/generate.py)", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in generate_all(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
