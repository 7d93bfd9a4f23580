"""Settings: file < env < flags, and one clear line + exit 2 for every operator error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter import config
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
    ("poll_interval_seconds: fast\n", {},
     "poll_interval_seconds must be a duration like 15s, 2m, 1h30m or a number of seconds, "
     "got 'fast'"),
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


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_cli_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("dsn: postgresql://u@h/db\npoll_intervall: 3\n")
    result = run_cli("serve", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cj-health-exporter: error: unknown setting poll_intervall (from config file {cfg})"]


def test_cli_missing_dsn_exits_2() -> None:
    result = run_cli("serve")
    assert result.returncode == 2 and "no dsn given" in result.stderr


def test_cli_unreachable_dsn_with_fail_fast_exits_2_without_the_password(tmp_path: Path) -> None:
    socket_dir = tmp_path / "nothing-listens-here"
    socket_dir.mkdir()
    dsn = f"postgresql://cj:Sup3rSecret@/cj?host={socket_dir}"
    result = run_cli("serve", "--dsn", dsn, "--web.listen-address", "127.0.0.1:0", "--fail-fast")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to postgresql+psycopg://cj:***@/cj" in lines[0]
    assert "Sup3rSecret" not in result.stderr + result.stdout


def test_cli_unparseable_dsn_from_env_exits_2() -> None:
    result = run_cli("serve", env={"CJ_HEALTH_DSN": "::garbage::"})
    assert result.returncode == 2 and "is not a database URL" in result.stderr
