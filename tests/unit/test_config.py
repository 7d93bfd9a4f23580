"""Settings: file < env < flags, and one clear line (OperatorError) for every operator error;
a Settings repr never shows a password. The same errors through the real command line (exit 2):
tests/process/test_config_cli.py."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.errors import OperatorError


def load(tmp_path: Path, yaml_text: str | None = None, env: dict[str, str] | None = None,
         **flags: object) -> config.Settings:
    path = None
    if yaml_text is not None:
        path = tmp_path / "cfg.yml"
        path.write_text(yaml_text)
    return config.load(str(path) if path else None, env or {}, flags)


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.poll_interval_seconds == 15 and s.stale_after == 3 and s.max_batches == 5000
    assert s.listen_address == f":{config.DEFAULT_PORT}"
    assert s.remediation.enabled is False and s.remediation.dry_run is True


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    yaml_text = "poll_interval_seconds: 30\nmax_batches: 10\nstale_after: 5\n"
    env = {"CJ_HEALTH_POLL_INTERVAL_SECONDS": "20", "CJ_HEALTH_MAX_BATCHES": "20"}
    s = load(tmp_path, yaml_text, env, poll_interval_seconds="7")
    assert (s.poll_interval_seconds, s.max_batches, s.stale_after) == (7.0, 20, 5)


def test_nested_remediation_from_file_and_env(tmp_path: Path) -> None:
    yaml_text = "remediation:\n  enabled: true\n  actions: [backfill_anchors]\n"
    env = {"CJ_HEALTH_REMEDIATION_DRY_RUN": "false",
           "CJ_HEALTH_REMEDIATION_ACTIONS": "backfill_anchors,refinalize"}
    s = load(tmp_path, yaml_text, env)
    assert s.remediation.enabled and not s.remediation.dry_run
    assert s.remediation.actions == ("backfill_anchors", "refinalize")


@pytest.mark.parametrize(("yaml_text", "env", "message"), [
    ("pol_interval_seconds: 5\n", {}, "unknown setting pol_interval_seconds (from config file"),
    ("remediation:\n  enable: true\n", {}, "unknown setting remediation.enable"),
    (None, {"CJ_HEALTH_POLLINTERVAL": "5"}, "unknown environment variable CJ_HEALTH_POLLINTERVAL"),
    ("poll_interval_seconds: fast\n", {}, "poll_interval_seconds must be float, got 'fast'"),
    (None, {"CJ_HEALTH_MAX_BATCHES": "-1"}, "max_batches must be greater than 0"),
    ("max_batches: true\n", {}, "max_batches must be int"),
    ("log_level: loud\n", {}, "log_level must be one of"),
    ("listen_address: localhost\n", {}, "web.listen-address must be HOST:PORT"),
    ("remediation:\n  actions: [drop_tables]\n", {}, "unknown action 'drop_tables'"),
    ("remediation: yes\n", {}, "remediation must be a mapping"),
    ("- a\n- b\n", {}, "must hold a mapping of settings"),
    ("a: [\n", {}, "is not valid YAML at line"),
    (None, {"CJ_HEALTH_REMEDIATION_ENABLED": "maybe"}, "remediation.enabled must be bool"),
])
def test_bad_settings_raise_one_clear_line(tmp_path: Path, yaml_text: str | None,
                                           env: dict[str, str], message: str) -> None:
    with pytest.raises(OperatorError) as info:
        load(tmp_path, yaml_text, env)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("dsn", "message"), [
    ("not a url", "is not a database URL"),
    ("mysql://u:pw@h/db", "must be a postgresql:// URL"),
    ("postgresql+psycopg2://u:pw@h/db", "driver must be psycopg"),
])
def test_bad_dsns(dsn: str, message: str) -> None:
    with pytest.raises(OperatorError, match=message) as info:
        config.parse_dsn(dsn)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("dsn", ["postgres://u@h/db", "postgresql://u@h/db",
                                 "postgresql+psycopg://u@h/db"])
def test_dsn_normalised_to_psycopg3(dsn: str) -> None:
    assert config.parse_dsn(dsn).drivername == "postgresql+psycopg"


def test_dsn_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("postgresql://u:secret@h/db\n")
    assert config.resolve_dsn(None, str(path)).password == "secret"
    with pytest.raises(OperatorError, match="cannot read dsn file"):
        config.resolve_dsn(None, str(tmp_path / "missing"))


def test_settings_repr_hides_dsns() -> None:
    secret = "Sx9-p@ss:w/rd%7e-unique"
    settings = Settings(dsn=f"postgresql://u:{secret}@h/d", remediation=RemediationSettings(
        write_dsn=f"postgresql://w:{secret}@h/d"))
    shown = repr(settings)
    assert secret not in shown and urllib.parse.quote(secret, safe="") not in shown
