"""Lint the generated dashboards as grafana's dashboard-linter would, plus the metric contract.

grafana/dashboard-linter cannot be installed here (a Go tool, no network), so its rules are
re-implemented over the JSON, with every PromQL expression parsed by the PyPI `promql-parser`
(the Rust port of the Prometheus parser). Rule names follow the linter's:

- template-datasource-rule: one `datasource` variable, type datasource, query prometheus,
  label "Data source";
- template-job-rule / template-instance-rule: `job` and `instance` query variables on
  `$datasource`, labelled Job / Instance, multi-select with All = `.+`;
- template-label-promql-rule: query variables are `label_values(<valid PromQL>, label)`;
- template-on-time-change-reload: query variables refresh on time-range change (2);
- panel-datasource-rule: every panel and every target uses `${datasource}`;
- panel-title-description-rule, panel-units-rule, panel-no-targets-rule;
- target-promql-rule: every expression parses once the template variables are substituted;
- target-job-rule / target-instance-rule: every selector has `job=~"$job"` and
  `instance=~"$instance"` (stricter than the linter: increase() is held to it as well);
- target-rate-interval-rule: rate/irate/increase ranges are `$__rate_interval`;
- target-counter-agg-rule: `*_total` counters appear only inside rate/irate/increase;
- uneditable-dashboard: `editable` false; plus schemaVersion, uid, stable version, id null,
  and only current panel types (no graph, singlestat or row).

Beyond the linter, every selector is checked against docs/metrics.md: the metric exists, each
matcher and grouping label is one of its labels (or job/instance), and matcher values are among
the documented label values. Annotations are linted like targets, except that the rule pack's
ALERTS series have no `instance` (alerts aggregate the replica labels away).

    python dashboards/lint.py            # lint dashboards/*.json, exit 1 on a finding
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as pp

DASHBOARDS_DIR = Path(__file__).resolve().parent
METRICS_DOC = DASHBOARDS_DIR.parent / "docs" / "metrics.md"

SCHEMA_VERSION = 42  # Grafana's current one (tests/test_dashboards_schema.py checks it)
PANEL_TYPES = frozenset({"timeseries", "stat", "table", "bargauge", "alertlist"})
DATASOURCE_UIDS = frozenset({"${datasource}", "$datasource"})
RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
# Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts) this project may use;
# a typo or an unlisted unit is a finding.
UNITS = frozenset(
    {
        "none", "short", "string", "percent", "percentunit", "locale",
        "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms",
        "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeFromNow", "dateTimeAsSystem",
        "bytes", "decbytes", "ops", "reqps", "cps", "cpm",
        "bool", "bool_yes_no", "bool_on_off",
    }
)  # fmt: skip

# Sample values substituted for the template variables before parsing. They are distinctive on
# purpose: a matcher hard-coded to a real job name does not pass for `job=~"$job"`.
LINT_VALUES: dict[str, str] = {
    "job": "lint-sample-job",
    "instance": "lint-sample-instance:10124",
    "cj_batch_id": "424242",
    "__rate_interval": "7331s",
    "__interval": "61s",
    "__range": "3607s",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(
    r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$", re.S
)

# Prometheus' own series, beside docs/metrics.md: ALERTS (for the rule pack, with the labels the
# pack keeps on it) and the scrape's `up` (job and instance only).
BUILTIN_LABELS: dict[str, frozenset[str]] = {
    "ALERTS": frozenset({"alertname", "alertstate", "severity", "job", "cj_batch_id"}),
    "up": frozenset({"job", "instance"}),
}


class UnknownVariable(KeyError):
    """An expression uses a template variable that has no substitution value."""


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $var, ${var}, ${var:format} and [[var]] with `values[var]`."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise UnknownVariable(name)
        return values[name]

    return VARIABLE.sub(replace, expr)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard, with where it comes from."""

    where: str  # "panel 'Title' target A", "annotation 'Name'", "variable 'job'"
    expr: str
    kind: str  # target | annotation | variable
    instant: bool = False
    # the job/instance matchers every selector of this expression must carry
    required: tuple[str, ...] = ("job", "instance")
    panel: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def iter_queries(dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL expression: panel targets, annotations, and query variables' selectors."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets") or []:
            yield Query(
                where=f"panel {panel.get('title')!r} target {target.get('refId')}",
                expr=target.get("expr", ""),
                kind="target",
                instant=bool(target.get("instant")),
                panel=panel,
            )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation_expr(annotation)
        if expr is not None:
            # ALERTS have no instance: the rule pack aggregates the replica labels away
            yield Query(
                f"annotation {annotation.get('name')!r}",
                expr,
                "annotation",
                required=("job",),
            )
    defined: list[str] = []  # a variable may only filter on the variables defined before it
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            match = LABEL_VALUES.match(str(variable.get("query", "")))
            if match and match.group("selector"):
                yield Query(
                    f"variable {variable['name']!r}",
                    match.group("selector"),
                    "variable",
                    required=tuple(v for v in ("job", "instance") if v in defined),
                )
        defined.append(variable.get("name", ""))


def annotation_expr(annotation: Mapping[str, Any]) -> str | None:
    """A Prometheus annotation's PromQL: in `target.expr` (the current schema), or `expr` (the
    legacy place Grafana still migrates from)."""
    target = annotation.get("target")
    if isinstance(target, Mapping) and "expr" in target:
        return str(target["expr"])
    return str(annotation["expr"]) if "expr" in annotation else None


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Depth-first (node, ancestors) over a promql_parser AST."""
    yield node, parents
    below = (*parents, node)
    if isinstance(node, pp.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, pp.AggregateExpr):
        children = [node.expr] + ([node.param] if isinstance(node.param, pp.Expr) else [])
    elif isinstance(node, pp.Call):
        children = list(node.args)
    elif isinstance(node, pp.MatrixSelector):
        children = [node.vector_selector]
    elif isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        children = [node.expr]
    else:
        children = []
    for child in children:
        yield from walk(child, below)


def selectors(node: Any) -> list[pp.VectorSelector]:
    return [n for n, _ in walk(node) if isinstance(n, pp.VectorSelector)]


@dataclass
class Contract:
    """docs/metrics.md: metric -> labels, and label -> documented values."""

    labels: dict[str, set[str]]
    values: dict[str, set[str]]


def load_contract(path: Path = METRICS_DOC) -> Contract:
    labels: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name = cells[0].strip("`")
        labels[name] = set(re.findall(r"(?:^|,\s*)`(\w+)`", cells[1]))
        for label, enum in re.findall(r"`(\w+)` = ((?:`[\w]+`(?: \\\| )?)+)", cells[1]):
            values.setdefault(label, set()).update(re.findall(r"`(\w+)`", enum))
    for label, enum in re.findall(r"`(\w+)` is one of: ((?:`\w+`,?\s*)+)", text):
        values.setdefault(label, set()).update(re.findall(r"`(\w+)`", enum))
    return Contract(labels, values)


def _uid(datasource: Any) -> Any:
    """The uid of a datasource reference: {"type", "uid"}, or a legacy plain name/variable."""
    return datasource.get("uid") if isinstance(datasource, dict) else datasource


def lint(
    dashboard: Mapping[str, Any], contract: Contract | None = None, uid: str | None = None
) -> list[str]:
    """Every finding, as text; an empty list is a clean dashboard."""
    contract = contract or load_contract()
    findings: list[str] = []
    title = dashboard.get("title", "?")

    def finding(message: str) -> None:
        findings.append(f"{title}: {message}")

    # --- dashboard ----------------------------------------------------------------------------
    if dashboard.get("schemaVersion") != SCHEMA_VERSION:
        finding(f"schemaVersion is {dashboard.get('schemaVersion')}, want {SCHEMA_VERSION}")
    if dashboard.get("editable") is not False:
        finding("uneditable-dashboard: editable must be false (provisioned, generated)")
    if not dashboard.get("uid") or len(dashboard["uid"]) > 40:
        finding(f"uid {dashboard.get('uid')!r} missing or longer than 40 characters")
    if uid is not None and dashboard.get("uid") != uid:
        finding(f"uid is {dashboard.get('uid')!r}, want {uid!r}")
    version = dashboard.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        finding(f"version {version!r} must be a fixed positive integer")
    if dashboard.get("id") is not None:
        finding("id must be null (Grafana assigns it)")
    if not dashboard.get("description"):
        finding("dashboard has no description")

    # --- variables ----------------------------------------------------------------------------
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasources = [v for v in variables.values() if v.get("type") == "datasource"]
    if len(datasources) != 1 or datasources[0].get("name") != "datasource":
        finding("template-datasource-rule: want exactly one datasource variable named 'datasource'")
    else:
        ds = datasources[0]
        if ds.get("query") != "prometheus":
            finding(f"template-datasource-rule: datasource query is {ds.get('query')!r}")
        if ds.get("label") != "Data source":
            finding(f"template-datasource-rule: label is {ds.get('label')!r}, want 'Data source'")
    for name, label in (("job", "Job"), ("instance", "Instance")):
        variable = variables.get(name)
        if variable is None:
            finding(f"template-{name}-rule: missing the {name} variable")
            continue
        if _uid(variable.get("datasource")) not in DATASOURCE_UIDS:
            finding(f"template-{name}-rule: {name} must use the $datasource variable")
        if variable.get("type") != "query":
            finding(f"template-{name}-rule: {name} must be a query variable")
        if variable.get("label") != label:
            finding(f"template-{name}-rule: {name} label is {variable.get('label')!r}")
        if not variable.get("multi") or not variable.get("includeAll"):
            finding(f"template-{name}-rule: {name} must be multi-select with All")
        if variable.get("allValue") != ".+":
            finding(f"template-{name}-rule: {name} allValue must be '.+'")
    for name, variable in variables.items():
        if variable.get("type") != "query":
            continue
        if variable.get("refresh") != 2:
            finding(f"template-on-time-change-reload: variable {name!r} refresh must be 2")
        if _uid(variable.get("datasource")) not in DATASOURCE_UIDS:
            finding(f"variable {name!r} does not use the $datasource variable")
        if not LABEL_VALUES.match(str(variable.get("query", ""))):
            finding(f"template-label-promql-rule: variable {name!r} is not label_values(...)")

    # --- panels -------------------------------------------------------------------------------
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    if len(set(ids)) != len(ids) or None in ids:
        finding("panel ids must be unique and set")
    titles = [p.get("title") for p in dashboard.get("panels", [])]
    if len(set(titles)) != len(titles):
        # the rule pack links panels by title (the `panel` of each spec in alerts/cjalerts.py)
        finding(f"panel titles must be unique: {sorted(t for t in titles if titles.count(t) > 1)}")
    for panel in dashboard.get("panels", []):
        where = f"panel {panel.get('title')!r}"
        kind = panel.get("type")
        if kind not in PANEL_TYPES:
            finding(f"{where}: type {kind!r} is not one of {sorted(PANEL_TYPES)}")
        if not panel.get("title") or not panel.get("description"):
            finding(f"panel-title-description-rule: {where} needs a title and a description")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            finding(f"panel-units-rule: {where} has no or an invalid unit: {unit!r}")
        if _uid(panel.get("datasource")) not in DATASOURCE_UIDS:
            finding(f"panel-datasource-rule: {where} does not use the datasource variable")
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "xywh") or grid["x"] + grid["w"] > 24:
            finding(f"{where}: gridPos {grid} is not a valid 24-column position")
        targets = panel.get("targets") or []
        if kind != "alertlist" and not targets:
            finding(f"panel-no-targets-rule: {where} has no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            finding(f"{where}: duplicate refIds {refs}")
        for target in targets:
            if _uid(target.get("datasource")) not in DATASOURCE_UIDS:
                finding(
                    f"panel-datasource-rule: {where} target {target.get('refId')} does "
                    "not use the datasource variable"
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation_expr(annotation) is not None and \
                _uid(annotation.get("datasource")) not in DATASOURCE_UIDS:
            finding(f"annotation {annotation.get('name')!r} does not use the datasource variable")

    # --- PromQL -------------------------------------------------------------------------------
    for query in iter_queries(dashboard):
        findings.extend(f"{title}: {query.where}: {m}" for m in lint_query(query, contract))
    return findings


def lint_query(query: Query, contract: Contract) -> list[str]:
    """Findings for one expression (see the module docstring)."""
    out: list[str] = []
    if not query.expr.strip():
        return ["empty expression"]
    try:
        text = substitute(query.expr, LINT_VALUES)
    except UnknownVariable as exc:
        return [f"unknown template variable ${exc.args[0]} in {query.expr!r}"]
    try:
        ast = pp.parse(text)
    except ValueError as exc:  # promql_parser reports syntax errors as ValueError
        return [f"target-promql-rule: does not parse: {exc} in {text!r}"]

    sample_rate = pp.parse_duration(LINT_VALUES["__rate_interval"])
    metric_labels: set[str] = set()
    for node, parents in walk(ast):
        if isinstance(node, pp.VectorSelector):
            out.extend(_check_selector(node, query.required, contract))
            metric_labels |= _labels_of(node.name, contract)
            if node.name and node.name.endswith("_total"):
                call = parents[-2] if len(parents) >= 2 else None
                if not (
                    parents
                    and isinstance(parents[-1], pp.MatrixSelector)
                    and isinstance(call, pp.Call)
                    and call.func.name in RANGE_FUNCTIONS
                ):
                    out.append(
                        f"target-counter-agg-rule: counter {node.name} is not inside "
                        "rate/irate/increase"
                    )
        elif isinstance(node, pp.MatrixSelector):
            call = parents[-1] if parents else None
            in_range_function = isinstance(call, pp.Call) and call.func.name in RANGE_FUNCTIONS
            if in_range_function and node.range != sample_rate:
                out.append(
                    f"target-rate-interval-rule: {call.func.name}() must use $__rate_interval"
                )
    allowed = metric_labels | {"job", "instance"}
    for node, _ in walk(ast):
        grouping: list[str] = []
        if isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            grouping = list(node.modifier.labels)
        elif isinstance(node, pp.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping = list(node.modifier.matching.labels)
            grouping += list(node.modifier.group_labels or [])
        unknown = sorted(set(grouping) - allowed)
        if unknown:
            out.append(f"grouping by labels {unknown} that no selected metric has")
    return out


def _labels_of(name: str | None, contract: Contract) -> set[str]:
    if name in BUILTIN_LABELS:
        return set(BUILTIN_LABELS[name])
    return set(contract.labels.get(name or "", set()))


def _check_selector(
    node: pp.VectorSelector, required: tuple[str, ...], contract: Contract
) -> list[str]:
    out: list[str] = []
    name = node.name
    if node.matchers.or_matchers:
        out.append(f"{name}: `or` matchers are not supported by this lint")
    matchers = {m.name: m for m in node.matchers.matchers}
    for label in required:
        matcher = matchers.get(label)
        # the sample value can only have come from substituting the variable
        if matcher is None or matcher.op != pp.MatchOp.Re or matcher.value != LINT_VALUES[label]:
            out.append(f'target-{label}-rule: selector {name} lacks {label}=~"${label}"')
    if name is None:
        out.append("selector without a metric name")
        return out
    if name not in BUILTIN_LABELS and name not in contract.labels:
        out.append(f"metric {name} is not in docs/metrics.md")
        return out
    known = _labels_of(name, contract) | {"job", "instance"}
    for label, matcher in matchers.items():
        if label not in known:
            out.append(f"{name}: label {label!r} is not one of its labels {sorted(known)}")
            continue
        documented = contract.values.get(label)
        if documented is None or name in BUILTIN_LABELS or label in ("job", "instance"):
            continue
        wanted = matcher.value.split("|") if matcher.op == pp.MatchOp.Re else [matcher.value]
        undocumented = [v for v in wanted if v not in documented]
        if undocumented:
            out.append(f"{name}: {label} values {undocumented} are not documented")
    return out


def lint_files(paths: list[Path]) -> list[str]:
    contract = load_contract()
    findings: list[str] = []
    for path in paths:
        findings.extend(lint(json.loads(path.read_text(encoding="utf-8")), contract))
    return findings


def main() -> int:
    findings = lint_files(sorted(DASHBOARDS_DIR.glob("*.json")))
    for line in findings:
        print(line, file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
