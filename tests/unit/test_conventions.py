"""The Prometheus exporter conventions of issue 13: log lines (logfmt / one JSON object per line,
never a password), help with env and default on every flag, the standard process/platform/GC
families declared, liveness vs readiness, a landing page without Python reprs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from exporter import cli, config, logs, version
from exporter.collector import SelfStats, SnapshotCollector, render
from exporter.web import pages

SECRET = "Sup3r:S/ecret"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream, logging.getLogger("exporter.test")
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def emit(stream: io.StringIO, log: logging.Logger, fmt: str) -> list[str]:
    logs.setup("debug", fmt, stream)
    log.info('serving "x" at %s', "postgresql+psycopg://cj:Sup3rSecret@db/cj")
    log.warning("libpq said host=db password='%s' dbname=cj", SECRET)
    try:
        raise RuntimeError("boom\nsecond line postgresql://u:pw1@h/db")
    except RuntimeError:
        log.exception("failed")
    return stream.getvalue().splitlines()


def test_json_logs_are_one_object_per_line_without_passwords(
        captured: tuple[io.StringIO, logging.Logger]) -> None:
    lines = emit(*captured, "json")
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert all(r["logger"] == "exporter.test" and r["ts"].endswith("Z") for r in records)
    assert records[0]["msg"] == 'serving "x" at postgresql+psycopg://cj:***@db/cj'
    assert "password=***" in records[1]["msg"]
    assert "Traceback" in records[2]["err"] and "u:***@h" in records[2]["err"]
    text = "\n".join(lines)
    assert "Sup3rSecret" not in text and "S/ecret" not in text and "pw1" not in text


def test_logfmt_quotes_and_escapes(captured: tuple[io.StringIO, logging.Logger]) -> None:
    lines = emit(*captured, "logfmt")
    assert len(lines) == 3  # the traceback stays on its line
    first = lines[0]
    assert first.startswith("ts=") and " level=info logger=exporter.test " in first
    assert first.endswith('msg="serving \\"x\\" at postgresql+psycopg://cj:***@db/cj"')
    assert "err=\"Traceback" in lines[2] and "\\n" in lines[2]
    assert "Sup3rSecret" not in "".join(lines) and "pw1" not in "".join(lines)


def test_log_level_filters(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    logs.setup("warning", "logfmt", stream)
    log.info("hidden")
    log.warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_every_flag_has_help_with_its_env_and_default() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subcommands
    choices = getattr(sub, "choices", {})
    assert set(choices) >= {"serve", "demo", "inspect", "charges", "install-view", "remediate",
                            "healthcheck", "check-config", "assets"}
    seen = 0
    for name, command in choices.items():
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            if action.help == "==SUPPRESS==":  # an alias of another flag
                continue
            decl = next((d for d in config.declarations() if d.key == action.dest), None)
            if decl is None:
                continue
            seen += 1
            assert f"[env {decl.env}" in action.help, (name, action.help)
            if decl.default not in (None, (), ""):
                assert "default " in action.help, (name, action.help)
    assert seen > 20


def test_the_old_log_level_flag_still_works_and_durations_are_shown_as_durations() -> None:
    args = cli.build_parser().parse_args(["serve", "--log-level", "debug"])
    assert args.log_level == "debug"
    serve = cli.build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore
    text = " ".join(serve.format_help().split())
    assert "--log-level" not in text and "--log.level" in text
    assert "default 7d" in text and "default 15s" in text and "default 1h" in text


def test_the_demo_shows_its_own_defaults() -> None:
    demo = cli.build_parser()._subparsers._group_actions[0].choices["demo"]  # type: ignore
    text = " ".join(demo.format_help().split())
    assert "default 127.0.0.1:10124" in text and "default 5s" in text


def stats(**kw: object) -> SelfStats:
    base: dict[str, object] = dict(up=False, stale=False, last_success=None,
                                   last_duration=None, polls=0, errors={}, skipped=0)
    base.update(kw)
    return SelfStats(**base)  # type: ignore[arg-type]


def test_the_standard_families_can_be_left_out() -> None:
    body = render(SnapshotCollector(None, stats()), standard=False).text.decode()
    assert "process_" not in body and "python_info" not in body and "python_gc" not in body
    assert "cj_health_up" in body


def status(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "up": True, "stale": False, "last_success": "2026-12-01T10:00:00+00:00",
        "last_error": None, "exported_batches": 3, "poll_interval_seconds": 15.0}
    base.update(kw)
    return base


@pytest.mark.parametrize(("kw", "health", "ready"), [
    ({}, "ok", True),
    ({"up": False, "last_error": "connection: refused"}, "degraded", True),
    ({"up": False, "stale": True}, "stale", False),
    ({"stale": True}, "stale", False),
    ({"up": False, "last_success": None}, "degraded", False),  # no good poll yet
])
def test_liveness_always_200_readiness_follows_staleness(kw: dict[str, object], health: str,
                                                         ready: bool) -> None:
    s = status(**kw)
    for path in ("/healthz", "/-/healthy"):
        found = pages.page(path, s, "/metrics")
        assert found is not None
        code, ctype, body = found
        assert code == 200 and ctype == "application/json"
        doc = json.loads(body)
        assert doc["status"] == health and doc["version"] == version()
        assert doc["stale"] is (health == "stale")
    found = pages.page("/-/ready", s, "/metrics")
    assert found is not None and found[0] == (200 if ready else 503)
    assert json.loads(found[2])["ready"] is ready


def test_the_pages_are_the_paths_a_telemetry_path_may_not_take() -> None:
    assert set(config.RESERVED_PATHS) == {"/", *pages.LIVENESS_PATHS, *pages.READINESS_PATHS}


def test_landing_page_has_the_version_links_and_no_python_reprs() -> None:
    found = pages.page("/", status(up=False, last_error=None), "/probe/metrics")
    assert found is not None and found[0] == 200
    body = found[2].decode()
    assert f"cj-health-exporter {version()}" in body
    assert 'href="/probe/metrics"' in body and 'href="/-/ready"' in body
    for repr_ in (">True<", ">False<", ">None<", "{", "15.0"):
        assert repr_ not in body, repr_
    assert ">none<" in body and ">15s<" in body
    assert pages.page("/nope", status(), "/metrics") is None


def test_failed_polls_are_retried_with_backoff_up_to_the_interval() -> None:
    """Nothing listens on port 1: each poll fails at once (connection refused)."""
    from exporter import db
    from exporter.config import Settings, parse_dsn
    from exporter.poll.scheduler import Poller

    settings = Settings(poll_interval_seconds=6.0, connect_timeout_seconds=2)
    engine = db.make_engine(parse_dsn("postgresql://u@127.0.0.1:1/db"), 2)
    poller = Poller(settings, engine)
    assert poller.retry_delay() is None  # nothing failed yet
    delays = []
    for _ in range(5):
        poller.poll_once()
        delays.append(poller.retry_delay())
    engine.dispose()
    assert poller.stats().errors["connection"] == 5
    low = [1.0, 2.0, 4.0, 6.0, 6.0]
    for delay, bottom in zip(delays, low, strict=True):
        assert delay is not None and bottom <= delay <= min(bottom * 1.2, 6.0), delays


def test_the_telemetry_path_moves_the_metrics_and_the_pages_stay() -> None:
    from exporter.handoff import Page, Store
    from exporter.web.server import MetricsServer
    from tests.support.process import http_get

    rendered = render(SnapshotCollector(None, stats()))
    server = MetricsServer("127.0.0.1", 0, Store(Page(rendered, status())),
                           telemetry_path="/probe/metrics")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, _, body = http_get(f"{base}/probe/metrics")
        assert code == 200 and body == rendered.text
        assert http_get(f"{base}/metrics")[0] == 404
        assert http_get(f"{base}/-/healthy")[0] == 200
        assert b'href="/probe/metrics"' in http_get(f"{base}/")[2]
    finally:
        server.stop()
