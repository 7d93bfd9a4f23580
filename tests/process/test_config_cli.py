"""Settings errors through the real command line: exit 2 and one line on stderr, never the
password. (The layers and the validation themselves are tested in-process in
tests/unit/test_config.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.support.process import run_cli


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


def test_cli_unreachable_dsn_exits_2_without_the_password(tmp_path: Path) -> None:
    socket_dir = tmp_path / "nothing-listens-here"
    socket_dir.mkdir()
    dsn = f"postgresql://cj:Sup3rSecret@/cj?host={socket_dir}"
    result = run_cli("serve", "--dsn", dsn, "--web.listen-address", "127.0.0.1:0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to postgresql+psycopg://cj:***@/cj" in lines[0]
    assert "Sup3rSecret" not in result.stderr + result.stdout


def test_cli_unparseable_dsn_from_env_exits_2() -> None:
    result = run_cli("serve", env={"CJ_HEALTH_DSN": "::garbage::"})
    assert result.returncode == 2 and "is not a database URL" in result.stderr
