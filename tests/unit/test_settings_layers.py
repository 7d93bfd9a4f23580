"""Settings an operator meets on day one (issue 13): durations wherever seconds are taken,
unknown CJ_HEALTH_* variables as warnings (Kubernetes service links), "flags win" also for
dsn vs dsn_file, and errors that name every way to give a missing DSN."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from exporter import config
from exporter.errors import OperatorError

# What Kubernetes injects into every pod of the namespace for a Service named
# cj-health-exporter with port 10124 (enableServiceLinks defaults to true).
SERVICE_LINKS = {
    "CJ_HEALTH_EXPORTER_SERVICE_HOST": "10.0.0.12",
    "CJ_HEALTH_EXPORTER_SERVICE_PORT": "10124",
    "CJ_HEALTH_EXPORTER_SERVICE_PORT_HTTP_METRICS": "10124",
    "CJ_HEALTH_EXPORTER_PORT": "tcp://10.0.0.12:10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP": "tcp://10.0.0.12:10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_PROTO": "tcp",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_PORT": "10124",
    "CJ_HEALTH_EXPORTER_PORT_10124_TCP_ADDR": "10.0.0.12",
}


def load(tmp_path: Path, yaml_text: str | None = None, env: dict[str, str] | None = None,
         warnings: list[str] | None = None, flag_map: Mapping[str, object] | None = None,
         **flags: object) -> config.Settings:
    path = None
    if yaml_text is not None:
        path = tmp_path / "cfg.yml"
        path.write_text(yaml_text)
    return config.load(str(path) if path else None, env or {}, {**(flag_map or {}), **flags},
                       warn=None if warnings is None else warnings.append)


@pytest.mark.parametrize(("text", "seconds"), [
    ("15s", 15.0), ("2m", 120.0), ("1h30m", 5400.0), ("7d", 604800.0), ("1w", 604800.0),
    ("500ms", 0.5), ("1m30s", 90.0), ("90", 90.0), ("0.5", 0.5), (15, 15.0), (2.5, 2.5),
    (" 10s ", 10.0),
])
def test_durations_prometheus_notation_or_seconds(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "30m1h", "1.5s", "-5s", "5 s", "nan", "inf",
                                  "1h1h", True])
def test_not_durations(text: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        config.parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (604800.0, "7d"), (3600.0, "1h"), (90.0, "1m30s"), (0.5, "500ms"), (15.0, "15s"), (0, "0s"),
])
def test_durations_print_back_exactly(seconds: float, text: str) -> None:
    assert config.format_duration(seconds) == text
    assert config.parse_duration(text) == seconds


def test_durations_in_the_file_the_environment_and_on_flags(tmp_path: Path) -> None:
    s = load(tmp_path, "lookback_seconds: 7d\nremediation:\n  cooldown_seconds: 30m\n",
             {"CJ_HEALTH_STATEMENT_TIMEOUT_SECONDS": "1500ms",
              "CJ_HEALTH_REMEDIATION_INTERVAL_SECONDS": "2m"},
             poll_interval_seconds="30s", recent_window_seconds="2h",
             connect_timeout_seconds="3s")
    assert s.lookback_seconds == 604800 and s.remediation.cooldown_seconds == 1800
    assert s.statement_timeout_seconds == 1.5 and s.remediation.interval_seconds == 120
    assert s.poll_interval_seconds == 30 and s.recent_window_seconds == 7200
    assert s.connect_timeout_seconds == 3 and isinstance(s.connect_timeout_seconds, int)


@pytest.mark.parametrize(("flags", "message"), [
    ({"poll_interval_seconds": "five"},
     "poll_interval_seconds must be a duration like 15s, 2m, 1h30m or a number of seconds, "
     "got 'five' (from command line)"),
    ({"connect_timeout_seconds": "1500ms"},
     "connect_timeout_seconds must be a whole number of seconds"),
    ({"poll_interval_seconds": "0s"}, "poll_interval_seconds must be greater than 0"),
    ({"lookback_seconds": "30m"}, "lookback_seconds must be at least recent_window_seconds"),
    ({"stale_after": "3s"}, "stale_after must be int"),  # a count of intervals, not a time
])
def test_bad_durations_are_one_clear_line(tmp_path: Path, flags: dict[str, str],
                                          message: str) -> None:
    with pytest.raises(OperatorError) as info:
        load(tmp_path, flag_map=flags)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_kubernetes_service_links_are_one_warning_not_an_error(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = load(tmp_path, env={**SERVICE_LINKS, "CJ_HEALTH_MAX_BATCHES": "7"}, warnings=warnings)
    assert s.max_batches == 7
    assert len(warnings) == 1, warnings
    assert "ignoring 8 Kubernetes service-link variables" in warnings[0]
    for name in SERVICE_LINKS:
        assert name in warnings[0]
    assert "enableServiceLinks: false" in warnings[0]


def test_an_unknown_variable_is_a_warning_with_the_likely_name(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = load(tmp_path, env={"CJ_HEALTH_POLL_INTERVAL": "5", "CJ_HEALTH_STATEMENT_TIMEOUT": "2",
                            "CJ_HEALTH_ZZZ": "1", "OTHER_THING": "x"}, warnings=warnings)
    assert s.poll_interval_seconds == 15  # ignored, not guessed
    assert warnings == [
        "ignoring unknown environment variable CJ_HEALTH_POLL_INTERVAL "
        "(did you mean CJ_HEALTH_POLL_INTERVAL_SECONDS?)",
        "ignoring unknown environment variable CJ_HEALTH_STATEMENT_TIMEOUT "
        "(did you mean CJ_HEALTH_STATEMENT_TIMEOUT_SECONDS?)",
        "ignoring unknown environment variable CJ_HEALTH_ZZZ",
    ]


def test_the_config_file_variable_is_not_a_setting_and_not_unknown(tmp_path: Path) -> None:
    warnings: list[str] = []
    load(tmp_path, env={config.CONFIG_FILE_ENV: "/etc/x.yml"}, warnings=warnings)
    assert warnings == []


def test_unknown_yaml_keys_stay_fatal(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match="unknown setting poll_intervall_seconds"):
        load(tmp_path, "poll_intervall_seconds: 5\n")
    with pytest.raises(OperatorError, match=r"unknown setting healthcheck\.credential_file"):
        load(tmp_path, "healthcheck:\n  credential_file: x\n")


@pytest.mark.parametrize(("yaml_text", "env", "flags", "dsn", "dsn_file"), [
    # a higher layer's dsn_file replaces a lower layer's dsn, and the other way round
    ("dsn: postgresql://f@h/db\n", {}, {"dsn_file": "/run/dsn"}, None, "/run/dsn"),
    (None, {"CJ_HEALTH_DSN": "postgresql://e@h/db"}, {"dsn_file": "/run/dsn"}, None, "/run/dsn"),
    ("dsn_file: /etc/dsn\n", {"CJ_HEALTH_DSN": "postgresql://e@h/db"}, {},
     "postgresql://e@h/db", None),
    ("dsn_file: /etc/dsn\n", {}, {"dsn": "postgresql://c@h/db"}, "postgresql://c@h/db", None),
    # the same layer keeps its own value
    ("dsn: postgresql://f@h/db\n", {"CJ_HEALTH_DSN": "postgresql://e@h/db"}, {},
     "postgresql://e@h/db", None),
])
def test_flags_win_for_dsn_and_dsn_file(tmp_path: Path, yaml_text: str | None,
                                        env: dict[str, str], flags: dict[str, str],
                                        dsn: str | None, dsn_file: str | None) -> None:
    s = load(tmp_path, yaml_text, env, flag_map=flags)
    assert (s.dsn, s.dsn_file) == (dsn, dsn_file)


def test_write_dsn_layers_like_the_read_dsn(tmp_path: Path) -> None:
    s = load(tmp_path, "remediation:\n  write_dsn: postgresql://f@h/db\n",
             {"CJ_HEALTH_REMEDIATION_WRITE_DSN_FILE": "/run/w"})
    assert s.remediation.write_dsn is None and s.remediation.write_dsn_file == "/run/w"


def test_both_spellings_in_one_layer_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match=r"give either dsn or dsn_file, not both \(both from "
                                            r"command line\)"):
        load(tmp_path, dsn="postgresql://c@h/db", dsn_file="/run/dsn")


@pytest.mark.parametrize(("key", "ways"), [
    ("dsn", "--dsn, CJ_HEALTH_DSN, --dsn-file, CJ_HEALTH_DSN_FILE (or dsn / dsn_file"),
    ("write_dsn", "--write-dsn, CJ_HEALTH_REMEDIATION_WRITE_DSN, --write-dsn-file, "
                  "CJ_HEALTH_REMEDIATION_WRITE_DSN_FILE (or remediation.write_dsn"),
])
def test_a_missing_dsn_names_the_real_flags_and_variables(key: str, ways: str) -> None:
    with pytest.raises(OperatorError) as info:
        config.resolve_dsn(None, None, key)
    assert ways in str(info.value)
    assert "CJ_HEALTH_WRITE_DSN " not in str(info.value) + " "


@pytest.mark.parametrize(("path", "ok"), [("/metrics", True), ("/probe/metrics", True),
                                          ("metrics", False), ("/", False), ("/healthz", False),
                                          ("/-/ready", False)])
def test_telemetry_path(tmp_path: Path, path: str, ok: bool) -> None:
    if ok:
        assert load(tmp_path, telemetry_path=path).telemetry_path == path
    else:
        with pytest.raises(OperatorError, match=r"web\.telemetry-path must be a path"):
            load(tmp_path, telemetry_path=path)


def test_port_out_of_range_says_so(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match="port 99999 is out of range"):
        load(tmp_path, listen_address="127.0.0.1:99999")
