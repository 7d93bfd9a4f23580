"""Building blocks shared by the cj-health dashboards (grafanalib 0.7.1).

grafanalib 0.7.1 still emits several Grafana 6/7 shapes (schemaVersion 12, a legacy `alertlist`
panel, a `bargauge` with `fieldOptions`, targets with `intervalFactor` 2, a query variable with
`refresh` on load only, keys like `rows`, `span` and `height`, and nulls for every unset
option). The helpers here wrap its classes, and `current_schema()` post-processes the whole
dashboard, so that it comes out in Grafana's current schema (schemaVersion 42, checked against
`@grafana/schema` by tests/test_dashboards_schema.py) and passes grafana's dashboard-linter
rules, which `tests/test_dashboards.py` re-implements:

* every panel and target uses the `datasource` template variable (type prometheus);
* every selector carries `job=~"$job"` and `instance=~"$instance"` (use `sel()` / `metric()`);
* rate/irate/increase use `$__rate_interval` (use `rate_interval()`);
* every panel has a description and a unit; variables refresh on time-range change;
* only timeseries, stat, table, bargauge and alertlist panels.

Metric names and labels follow docs/metrics.md, the contract with the exporter and alert rules.
Several replicas of the exporter (an HA pair) export identical series that differ only in
`instance`, so the batch and outbox panels aggregate with `max by (job, ...)`: that counts each
batch once however many replicas scrape the same database. Exporter-health panels keep `instance`.
"""

from __future__ import annotations

import json
from typing import Any

import attr
from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from exporter.vocabulary import PROBLEM_KINDS

SCHEMA_VERSION = 42  # @grafana/schema 13's defaultDashboard.schemaVersion
DASHBOARD_VERSION = 1  # stable: regenerating must not change the JSON
REFRESH = "30s"  # the exporter polls every 15 s by default
TAGS = ["cj-health"]

OVERVIEW_UID = "cj-health-overview"
BATCH_UID = "cj-health-batch"

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
# The uid the compose stack provisions (deploy/grafana/provisioning/datasources/); elsewhere
# Grafana falls back to the default Prometheus data source.
DEFAULT_DATASOURCE_UID = "prometheus"
DEFAULT_DATASOURCE_NAME = "Prometheus"

# The `problem` label values, declared once in exporter/vocabulary.py.
PROBLEMS = tuple(kind.label for kind in PROBLEM_KINDS)

GREEN = "green"
ORANGE = "orange"
RED = "red"


def sel(*extra: str) -> str:
    """Label matchers for a selector: the job and instance variables plus `extra` matchers."""
    return "{" + ", ".join(('job=~"$job"', 'instance=~"$instance"', *extra)) + "}"


def metric(name: str, *extra: str) -> str:
    """`name{job=~"$job", instance=~"$instance", extra...}`."""
    return name + sel(*extra)


def rate_interval(func: str, name: str, *extra: str) -> str:
    """`func(name{...}[$__rate_interval])` for rate, irate and increase."""
    return f"{func}({metric(name, *extra)}[$__rate_interval])"


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps in the current schema: the first step's value is null (base)."""
    return [{"color": color, "value": value} for color, value in pairs]


OK_ONLY = steps((GREEN, None))
BAD_FROM_ONE = steps((GREEN, None), (RED, 1))


def value_text(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A value mapping: raw value -> (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                value: {"text": text, "color": color, "index": index}
                for index, (value, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def drilldown_link(field: str = "cj_batch_id") -> dict[str, Any]:
    """A field override: clicking a batch id opens the batch drill-down with the same variables."""
    url = (
        f"/d/{BATCH_UID}?${{datasource:queryparam}}&${{job:queryparam}}&${{instance:queryparam}}"
        "&var-cj_batch_id=${__value.raw}&${__url_time_range}"
    )
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [
            {"id": "links", "value": [{"title": "Open the batch drill-down", "url": url}]},
        ],
    }


@attr.s
class Query(g.Target):
    """A Prometheus target that always uses the dashboard's `datasource` variable."""

    def to_json_data(self) -> dict[str, Any]:
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "format": self.format,
            "hide": self.hide,
            "instant": self.instant,
            "interval": self.interval,
            "legendFormat": self.legendFormat,
            "range": not self.instant,
            "refId": self.refId,
        }


def queries(
    *specs: tuple[str, str] | str, instant: bool = False, table: bool = False
) -> list[Query]:
    """Targets A, B, ... from `expr` or `(expr, legend)` pairs."""
    out = []
    for index, spec in enumerate(specs):
        expr, legend = (spec, "") if isinstance(spec, str) else spec
        out.append(
            Query(
                expr=expr,
                legendFormat=legend,
                refId=chr(ord("A") + index),
                instant=instant or table,
                format=g.TABLE_TARGET_FORMAT if table else g.TIME_SERIES_TARGET_FORMAT,
            )
        )
    return out


def pos(x: int, y: int, w: int, h: int) -> g.GridPos:
    return g.GridPos(h=h, w=w, x=x, y=y)


def timeseries(
    title: str,
    description: str,
    targets: list[Query],
    grid: g.GridPos,
    unit: str,
    *,
    stacked: bool = False,
    thresholds: list[dict[str, Any]] | None = None,
    draw: str = "line",
    fill: int = 10,
    min_zero: bool = True,
) -> g.TimeSeries:
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=grid,
        unit=unit,
        drawStyle=draw,
        fillOpacity=fill,
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none", "group": "A"},
        thresholds=thresholds or OK_ONLY,
        valueMin=0 if min_zero else None,
        legendDisplayMode="table",
        legendPlacement="right" if grid.w >= 12 else "bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        maxDataPoints=None,
    )


def stat(
    title: str,
    description: str,
    targets: list[Query],
    grid: g.GridPos,
    unit: str,
    *,
    thresholds: list[dict[str, Any]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    no_value: str = "no data",
    text_mode: str = "auto",
    graph: bool = False,
) -> g.Stat:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        # instant: a stat says what is true now. A range query reduced to its last value would
        # keep showing the last sample of a series that has since disappeared.
        targets=[attr.evolve(t, instant=True) for t in targets],
        gridPos=grid,
        format=unit,
        color={"mode": "thresholds"},
        colorMode="background" if thresholds else "value",
        graphMode="area" if graph else "none",
        reduceCalc="lastNotNull",
        thresholds=thresholds or OK_ONLY,
        mappings=mappings or [],
        noValue=no_value,
        textMode=text_mode,
        maxDataPoints=None,
    )


def table(
    title: str,
    description: str,
    targets: list[Query],
    grid: g.GridPos,
    unit: str,
    *,
    columns: list[str],
    value_name: str,
    sort_desc: bool = True,
    overrides: list[dict[str, Any]] | None = None,
    no_value: str = "none",
) -> g.Table:
    """An instant table: one row per series, label columns in `columns` order, then the value."""
    order = {name: index for index, name in enumerate([*columns, "Value"])}
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=grid,
        unit=unit,
        filterable=True,
        overrides=overrides or [],
        thresholds=OK_ONLY,
        sortBy=[g.TableSortByField(displayName=value_name, desc=sort_desc)],
        transformations=[
            {
                "id": "organize",
                "options": {
                    # the queries aggregate with `by (...)`, so the labels are exactly `columns`
                    "excludeByName": {"Time": True, "__name__": True, "instance": True},
                    "indexByName": order,
                    "renameByName": {"Value": value_name},
                },
            }
        ],
        extraJson={"fieldConfig": {"defaults": {"noValue": no_value}}},
        maxDataPoints=None,
    )


@attr.s
class BarGauge(g.Panel):
    """A bar gauge in the current schema (grafanalib 0.7.1 emits the Grafana 6 `fieldOptions`)."""

    unit = attr.ib(default="short")
    min = attr.ib(default=0)
    displayMode = attr.ib(default="gradient")
    orientation = attr.ib(default="horizontal")

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "color": {"mode": "thresholds"},
                        "min": self.min,
                        "unit": self.unit,
                    },
                    "overrides": [],
                },
                "options": {
                    "displayMode": self.displayMode,
                    "minVizHeight": 10,
                    "minVizWidth": 0,
                    "namePlacement": "auto",
                    "orientation": self.orientation,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True,
                    "sizing": "auto",
                    "valueMode": "color",
                },
                "type": g.BARGAUGE_TYPE,
            }
        )


def bargauge(
    title: str,
    description: str,
    targets: list[Query],
    grid: g.GridPos,
    unit: str,
    *,
    thresholds: list[dict[str, Any]] | None = None,
) -> BarGauge:
    return BarGauge(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=grid,
        unit=unit,
        thresholds=thresholds or BAD_FROM_ONE,
        maxDataPoints=None,
    )


@attr.s
class AlertList(g.Panel):
    """The unified-alerting alert list (grafanalib 0.7.1 only has the legacy one).

    It lists the data source managed rules that Grafana reads from Prometheus (the rule pack in
    alerts/), so the page an engineer got and the dashboard they open meet.
    """

    alertName = attr.ib(default="")
    labelFilter = attr.ib(default="")
    maxItems = attr.ib(default=20)

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
                "options": {
                    "alertInstanceLabelFilter": self.labelFilter,
                    "alertName": self.alertName,
                    "dashboardAlerts": False,
                    "groupBy": [],
                    "groupMode": "default",
                    "maxItems": self.maxItems,
                    "showInstances": True,
                    "sortOrder": 3,  # importance: firing first
                    "stateFilter": {
                        "error": True,
                        "firing": True,
                        "noData": True,
                        "normal": False,
                        "pending": True,
                    },
                    "viewMode": "list",
                },
                "type": g.ALERTLIST_TYPE,
            }
        )


def alertlist(
    title: str, description: str, grid: g.GridPos, *, extra_filter: str = ""
) -> AlertList:
    return AlertList(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        gridPos=grid,
        alertName="CJ",  # every rule of alerts/cj-batch-health.rules.yml starts with CJ
        labelFilter="{" + ", ".join(m for m in (JOB_ALERT_FILTER, extra_filter) if m) + "}",
        thresholds=OK_ONLY,
        maxDataPoints=None,
    )


@attr.s
class QueryVariable(g.Template):
    """A Prometheus query variable; `All` (regex `.+`) selected by default when multi."""

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().to_json_data()
        data["definition"] = self.query
        if self.includeAll:
            data["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        else:
            data["current"] = {}
        return data


@attr.s
class DatasourceVariable(g.Template):
    """The `datasource` variable (type prometheus) every panel and target uses."""

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().to_json_data()
        data["current"] = {
            "selected": True,
            "text": DEFAULT_DATASOURCE_NAME,
            "value": DEFAULT_DATASOURCE_UID,
        }
        return data


def datasource_variable() -> DatasourceVariable:
    return DatasourceVariable(
        name="datasource",
        label="Data source",
        type="datasource",
        query="prometheus",
        refresh=g.REFRESH_ON_DASHBOARD_LOAD,
        regex="",
    )


def _query_variable(name: str, label: str, query: str, *, multi: bool) -> QueryVariable:
    return QueryVariable(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        multi=multi,
        includeAll=multi,
        allValue=".+" if multi else None,
        sort=g.SORT_ALPHA_ASC if multi else g.SORT_NUMERIC_DESC,
        regex="",
    )


def job_instance_variables() -> list[g.Template]:
    return [
        _query_variable("job", "Job", "label_values(cj_health_up, job)", multi=True),
        _query_variable(
            "instance", "Instance", 'label_values(cj_health_up{job=~"$job"}, instance)', multi=True
        ),
    ]


def batch_variable() -> QueryVariable:
    return _query_variable(
        "cj_batch_id",
        "CJ batch",
        "label_values(" + metric("cj_batch_last_activity_timestamp_seconds") + ", cj_batch_id)",
        multi=False,
    )


def alert_annotation(*extra_matchers: str) -> dict[str, Any]:
    """Mark when CJ alerts fire, on every time series panel (Prometheus' ALERTS series).

    The rule pack aggregates the replica labels (instance, pod) away so that an HA pair pages
    once, so ALERTS carry `job` but no `instance`: only the job variable applies here.
    """
    matchers = ", ".join(
        ('alertstate="firing"', 'alertname=~"CJ.+"', 'job=~"$job"', *extra_matchers)
    )
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "expr": "ALERTS{" + matchers + "}",
        "hide": False,
        "iconColor": "red",
        "name": "Firing CJ alerts",
        "step": "60s",
        "tagKeys": "alertname,severity",
        "textFormat": "{{alertname}} {{cj_batch_id}}",
        "titleFormat": "{{alertname}}",
        "useValueForTime": False,
    }


# Alert list label filter: Grafana interpolates it itself, so the multi-value job variable needs
# the regex format. Alerts carry no instance label (see alert_annotation).
JOB_ALERT_FILTER = 'job=~"${job:regex}"'


BUILTIN_ANNOTATION: dict[str, Any] = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


# Keys grafanalib 0.7.1 writes that Grafana's current schema does not have (legacy Grafana 4-7
# shapes); current_schema() drops them.
LEGACY_DASHBOARD_KEYS = frozenset({"__inputs", "rows", "style", "sharedCrosshair", "hideControls"})
LEGACY_PANEL_KEYS = frozenset({"editable", "error", "height", "minSpan", "span",
                               # the table panel's Grafana 6 options
                               "color", "columns", "fontSize", "mappings", "styles"})
LEGACY_VARIABLE_KEYS = frozenset({"auto", "auto_count", "auto_min", "tagValuesQuery", "tagsQuery",
                                  "useTags", "tags", "definition"})
# Options the current panel plugins require (their defaults in @grafana/schema's panelcfg).
STAT_OPTIONS = {"percentChangeColorMode": "standard", "showPercentChange": False,
                "wideLayout": True}
BARGAUGE_OPTIONS = {"maxVizHeight": 300,
                    "legend": {"calcs": [], "displayMode": "list", "placement": "bottom",
                               "showLegend": False}}
TABLE_OPTIONS = {"frameIndex": 0, "cellHeight": "sm"}
TABLE_CUSTOM = {"cellOptions": {"type": "auto"}, "inspect": False}


def _drop_nulls(value: Any, in_steps: bool = False) -> Any:
    """Nulls out, everywhere but where the schema allows one: a threshold step's value (the base
    step is -Infinity, which JSON spells null)."""
    if isinstance(value, dict):
        return {
            key: _drop_nulls(item, in_steps=key == "steps")
            for key, item in value.items()
            if item is not None or (in_steps and key == "value")
        }
    if isinstance(value, list):
        # a list's items are threshold steps only right under a `steps` key
        return [_drop_nulls(item, in_steps=in_steps) if isinstance(item, dict)
                else _drop_nulls(item) for item in value]
    return value


def current_schema(board: dict[str, Any]) -> dict[str, Any]:
    """grafanalib's JSON in Grafana's current dashboard schema: legacy keys and nulls out, the
    options the current panel plugins require in, Prometheus annotations with their query in
    `target` (as Grafana's Prometheus data source migrates them on load)."""
    dashboard_id = board.get("id")
    for key in LEGACY_DASHBOARD_KEYS:
        board.pop(key, None)
    board["timepicker"] = {k: v for k, v in board.get("timepicker", {}).items()
                           if k != "time_options"}  # no longer in TimePickerConfig
    for panel in board.get("panels", []):
        for key in LEGACY_PANEL_KEYS:
            panel.pop(key, None)
        defaults = panel.setdefault("fieldConfig", {}).setdefault("defaults", {})
        options = panel.setdefault("options", {})
        if panel["type"] == "stat":
            options.update(STAT_OPTIONS)
        elif panel["type"] == "bargauge":
            options.update(BARGAUGE_OPTIONS)
        elif panel["type"] == "table":
            options.update(TABLE_OPTIONS)
            custom = defaults.setdefault("custom", {})
            custom.pop("displayMode", None)  # deprecated for cellOptions
            custom.update(TABLE_CUSTOM)
        elif panel["type"] == "timeseries":
            options.setdefault("legend", {})["showLegend"] = True
        if defaults.get("custom") == {}:
            del defaults["custom"]
    for variable in board.get("templating", {}).get("list", []):
        for key in LEGACY_VARIABLE_KEYS:
            variable.pop(key, None)
        if variable.get("current") == {}:
            del variable["current"]
    for annotation in board.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            target = {"expr": annotation.pop("expr"), "refId": "Anno"}
            if "step" in annotation:
                target["interval"] = annotation.pop("step")
            annotation["target"] = target
    out: dict[str, Any] = _drop_nulls(board)
    out["id"] = dashboard_id  # Dashboard.id is `number | null`: null lets Grafana assign it
    return out


class CurrentDashboard:
    """A grafanalib Dashboard whose JSON is in Grafana's current schema (`current_schema`).

    grafanalib's `generate-dashboard` and dashboards/generate.py only call `to_json_data()`, so
    both write the same bytes."""

    def __init__(self, dashboard: g.Dashboard) -> None:
        self.dashboard = dashboard

    def to_json_data(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(
            json.dumps(self.dashboard.to_json_data(), cls=DashboardEncoder))
        return current_schema(plain)


def dashboard(
    *,
    title: str,
    uid: str,
    description: str,
    panels: list[g.Panel],
    variables: list[g.Template],
    annotations: list[dict[str, Any]],
    time_from: str = "now-6h",
) -> CurrentDashboard:
    return CurrentDashboard(g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=TAGS,
        editable=False,
        schemaVersion=SCHEMA_VERSION,
        version=DASHBOARD_VERSION,
        refresh=REFRESH,
        time=g.Time(time_from, "now"),
        timezone="utc",
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=g.Templating(list=variables),
        annotations=g.Annotations(list=[BUILTIN_ANNOTATION, *annotations]),
        links=[
            g.DashboardLink(
                title="CJ health dashboards",
                type="dashboards",
                tags=TAGS,
                asDropdown=False,
                includeVars=True,
                keepTime=True,
            )
        ],
        panels=panels,
    ).auto_panel_ids())
