"""The dashboards conform to Grafana's own schema: `@grafana/schema` (npm, pinned in
.ci/node/package.json) compiled with `tsc --strict`.

Each dashboard JSON is assigned, as an object literal, to the package's `Dashboard` type; each
panel to `Panel`; each panel's `options` to its plugin's `Options` and its
`fieldConfig.defaults.custom` to the plugin's `FieldConfig` (timeseries, stat, table, bargauge;
the alert list has no published options type). TypeScript then reports every key the schema does
not know (grafanalib's legacy `rows`, `span`, `height`, ...), every `null` where the schema has
none, every wrong type and every required option missing. The schemaVersion must be the one
the package itself defaults to (`defaultDashboard.schemaVersion`).
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest

from tests.support import k8s

ROOT = k8s.ROOT
DASHBOARDS = ROOT / "dashboards"
NAMES = ("overview.json", "batch.json")

SCHEMA = "@grafana/schema"
PANEL_TYPES = {
    "timeseries": ("TimeSeries", "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "stat": ("Stat", "stat/panelcfg/x/StatPanelCfg_types.gen", False),
    "table": ("Table", "table/panelcfg/x/TablePanelCfg_types.gen", True),
    "bargauge": ("BarGauge", "bargauge/panelcfg/x/BarGaugePanelCfg_types.gen", False),
}


# JSON has no TypeScript enums: Json<T> is T with every enum replaced by the union of its string
# values ("absolute" for ThresholdsMode.Absolute); objects stay closed, so unknown keys, nulls and
# wrong values are still errors. PromAnnotation: the Prometheus data source's annotation query
# (its target with `expr`, and the four formatting keys its editor writes); the plugin's types
# are the one shape @grafana/schema leaves to the plugin (AnnotationQuery<TQuery>).
PRELUDE = """
type Json<T> = T extends string ? `${T}`
  : T extends readonly (infer U)[] ? Json<U>[]
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
interface PromQuery extends DataQuery { expr: string; interval?: string }
interface PromAnnotation extends AnnotationQuery<PromQuery> {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}
"""


def committed(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


def dashboard_ts(board: dict[str, Any]) -> str:
    """TypeScript that type-checks one dashboard against @grafana/schema."""
    lines = [f'import type {{ AnnotationQuery, Dashboard, DataQuery, Panel }} from "{SCHEMA}";']
    for alias, module, _ in PANEL_TYPES.values():
        lines.append(f'import type * as {alias} from "{SCHEMA}/dist/esm/raw/composable/{module}";')
    lines.append(PRELUDE)
    annotations = board.get("annotations", {}).get("list", [])
    rest = {k: v for k, v in board.items() if k != "annotations"}
    lines.append(f"export const dashboard: Json<Dashboard> = {k8s.ts_literal(rest)};")
    lines.append(f"export const annotations: Json<PromAnnotation>[] = "
                 f"{k8s.ts_literal(annotations)};")
    for index, panel in enumerate(board.get("panels", [])):
        lines.append(f"export const panel{index}: Json<Panel> = {k8s.ts_literal(panel)};")
        kind = PANEL_TYPES.get(panel.get("type"))
        if kind is None:
            continue
        alias, _, has_custom = kind
        lines.append(f"export const panel{index}Options: Json<{alias}.Options> = "
                     f"{k8s.ts_literal(panel.get('options', {}))};")
        if has_custom:
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
            lines.append(f"export const panel{index}Custom: Json<{alias}.FieldConfig> = "
                         f"{k8s.ts_literal(custom)};")
    return "\n".join(lines) + "\n"


def check(boards: dict[str, dict[str, Any]]) -> list[str]:
    return k8s.tsc({f"{name.removesuffix('.json')}.ts": dashboard_ts(board)
                    for name, board in boards.items()})


def current_schema_version() -> int:
    node = k8s.node()
    out = subprocess.run(
        [node, "--input-type=module", "-e",
         f'import("{SCHEMA}").then(m => console.log(m.defaultDashboard.schemaVersion))'],
        capture_output=True, text=True, timeout=60, cwd=k8s.NODE_DIR, check=True)
    return int(out.stdout.strip())


def test_dashboards_compile_against_grafanas_schema() -> None:
    boards = {name: committed(name) for name in NAMES}
    diagnostics = check(boards)
    assert diagnostics == [], "\n".join(diagnostics)
    panels = sum(len(b["panels"]) for b in boards.values())
    print(f"\n@grafana/schema {k8s.npm_version(SCHEMA)} + typescript "
          f"{k8s.npm_version('typescript')}: {len(boards)} dashboards, {panels} panels, "
          "0 errors")


def test_schema_version_is_the_current_one() -> None:
    version = current_schema_version()
    for name in NAMES:
        assert committed(name)["schemaVersion"] == version, name


def nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


def test_the_only_nulls_are_those_the_schema_allows() -> None:
    """`Threshold.value` (the base step is -Infinity) and `Dashboard.id` are `number | null`;
    nothing else may be null, also where the schema types a value as `unknown` (targets)."""
    for name in NAMES:
        found = nulls(committed(name))
        allowed = [p for p in found
                   if p == ".id" or p.endswith(".thresholds.steps[0].value")]
        assert found == allowed, name


# --- the check fails on what it must catch ---------------------------------------------------


def first(board: dict[str, Any], kind: str) -> dict[str, Any]:
    panel: dict[str, Any] = next(p for p in board["panels"] if p["type"] == kind)
    return panel


MUTATIONS = [
    ("legacy rows", lambda b: b.update(rows=[]), "'\"rows\"' does not exist"),
    ("legacy span", lambda b: first(b, "stat").update(span=4),
     "'\"span\"' does not exist"),
    ("null description", lambda b: first(b, "timeseries").update(description=None),
     "Type 'null' is not assignable to type 'string | undefined'"),
    ("null interval", lambda b: first(b, "table").update(interval=None), "Type 'null'"),
    ("unknown option", lambda b: first(b, "timeseries")["options"].update(legendd={}),
     "'\"legendd\"' does not exist"),
    ("missing required option", lambda b: first(b, "timeseries")["options"].pop("tooltip"),
     "Property 'tooltip' is missing"),
    ("bad enum", lambda b: first(b, "stat")["options"].update(colorMode="rainbow"),
     "'\"rainbow\"' is not assignable"),
    ("bad custom", lambda b: first(b, "timeseries")["fieldConfig"]["defaults"]["custom"].update(
        lineWidth="thick"), "Type 'string' is not assignable to type 'number"),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_tsc_rejects_a_broken_dashboard(case: str, mutate: Any, expected: str) -> None:
    board = copy.deepcopy(committed("overview.json"))
    mutate(board)
    diagnostics = check({"overview.json": board})
    assert any(expected in d for d in diagnostics), diagnostics
