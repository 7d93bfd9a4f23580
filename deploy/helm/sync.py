#!/usr/bin/env python3
"""Copy the rule pack and the dashboards into the Helm chart (Helm reads no file outside it).

    python deploy/helm/sync.py            # rewrite deploy/helm/cj-health-exporter/files/
    python deploy/helm/sync.py --check    # exit 1 when a file there is stale

files/cj-batch-health.rules.json is alerts/generate.py's rule pack rendered from
alerts/params.yml with four placeholders the chart's templates/prometheusrule.yaml replaces:
the job (@@CJ_JOB@@), the extra selector (@@CJ_EXTRA_SELECTOR@@, appended to every selector),
the Grafana URL and the runbook URL base. Everything else (thresholds, `for`, texts) is the
pack's. JSON, not YAML, so that the chart can put any escaped value in a placeholder and parse
the result with fromJson. files/dashboards/*.json are byte copies of dashboards/*.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = Path(__file__).resolve().parent / "cj-health-exporter"
FILES = CHART / "files"
RULES_JSON = FILES / "cj-batch-health.rules.json"
DASHBOARDS = ROOT / "dashboards"

PLACEHOLDERS = {
    "job": "@@CJ_JOB@@",
    "extra_selector": "@@CJ_EXTRA_SELECTOR@@",
    "grafana_url": "@@CJ_GRAFANA_URL@@",
    "runbook_url_base": "@@CJ_RUNBOOK_URL_BASE@@",
}


def load_generator() -> ModuleType:
    """alerts/generate.py, loaded by path (alerts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cj_alerts_generate_for_helm",
                                                  ROOT / "alerts" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pack(job: str, extra_selector: str = "", grafana_url: str | None = None,
         runbook_url_base: str | None = None) -> dict[str, Any]:
    """The rule pack of alerts/params.yml with these overrides, as data (what
    `python alerts/generate.py` writes, parsed)."""
    gen = load_generator()
    params_path = ROOT / "alerts" / "params.yml"
    raw: dict[str, Any] = gen.load_params(params_path)
    raw["job"] = job
    raw["extra_selector"] = extra_selector
    if grafana_url is not None:
        raw["links"]["grafana_url"] = grafana_url
    if runbook_url_base is not None:
        raw["links"]["runbook_url_base"] = runbook_url_base
    text: str = gen.render(raw, params_path.resolve().parent)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def expected_files() -> dict[Path, bytes]:
    """Every file the chart's files/ folder must hold, with its bytes."""
    template = pack(PLACEHOLDERS["job"], PLACEHOLDERS["extra_selector"],
                    PLACEHOLDERS["grafana_url"], PLACEHOLDERS["runbook_url_base"])
    out = {RULES_JSON: (json.dumps(template, indent=1, ensure_ascii=False) + "\n").encode()}
    for board in sorted(DASHBOARDS.glob("*.json")):
        out[FILES / "dashboards" / board.name] = board.read_bytes()
    return out


def stale() -> list[Path]:
    """Files that differ from what they should be, plus files that should not be there."""
    expected = expected_files()
    wrong = [p for p, data in expected.items() if not p.is_file() or p.read_bytes() != data]
    extra = [p for p in (FILES / "dashboards").glob("*.json") if p not in expected]
    return wrong + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file in the chart is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"out of date: {path.relative_to(ROOT)} (run: python deploy/helm/sync.py)",
                  file=sys.stderr)
        return 1 if out_of_date else 0
    expected = expected_files()
    for path in (FILES / "dashboards").glob("*.json"):
        if path not in expected:
            path.unlink()
    for path, data in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
