"""The finalizer's guards without a database: who is authorized and why not, the remediation
settings that are refused, the safety valves in their order, and a leader lock that cannot
reach its database (nothing listens on port 1). The cycle on a real PostgreSQL is in
tests/db/test_remediation_service.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.errors import OperatorError
from exporter.finalizer import valves
from exporter.finalizer.leader import LeaderLock
from exporter.finalizer.model import History
from exporter.finalizer.valves import Candidate

BOTH = ("backfill_anchors", "refinalize")


@pytest.mark.parametrize(("remediation", "reason"), [
    (RemediationSettings(), "remediation.enabled is false"),
    (RemediationSettings(enabled=True, actions=BOTH), "no write DSN"),
    (RemediationSettings(enabled=True, write_dsn="postgresql://w@db/cj"),
     "remediation.actions is empty"),
    (RemediationSettings(enabled=True, write_dsn_file="/nonexistent/dsn", actions=BOTH),
     "cannot read write_dsn file /nonexistent/dsn"),
])
def test_unauthorized_configurations_refuse_and_say_why(remediation: RemediationSettings,
                                                        reason: str) -> None:
    auth = valves.authorize(Settings(remediation=remediation).finalizer())
    assert not auth.allowed and reason in auth.reason
    assert not auth.allows("refinalize")


def test_authorized_configuration(tmp_path: Path) -> None:
    dsn_file = tmp_path / "write.dsn"
    dsn_file.write_text("postgresql://writer:secret@db/cj\n")
    auth = valves.authorize(Settings(remediation=RemediationSettings(
        enabled=True, write_dsn_file=str(dsn_file), actions=("refinalize",))).finalizer())
    assert auth.allowed and auth.reason == "dry run: refinalize"  # dry_run is the default
    assert auth.allows("refinalize") and not auth.allows("backfill_anchors")
    assert auth.write_url is not None and auth.write_url.password == "secret"


@pytest.mark.parametrize(("env", "message"), [
    ({"CJ_HEALTH_REMEDIATION_MAX_ACTIONS_PER_CYCLE": "0"}, "max_actions_per_cycle must be"),
    ({"CJ_HEALTH_REMEDIATION_COOLDOWN_SECONDS": "-1"}, "cooldown_seconds must not be negative"),
    ({"CJ_HEALTH_REMEDIATION_WRITE_DSN": "mysql://x@y/z"}, "must be a postgresql:// URL"),
    ({"CJ_HEALTH_REMEDIATION_WRITE_DSN": "postgresql://x@y/z",
      "CJ_HEALTH_REMEDIATION_WRITE_DSN_FILE": "/f"}, "either remediation.write_dsn"),
    ({"CJ_HEALTH_REMEDIATION_ACTIONS": "refinalize,delete_everything"}, "unknown action"),
])
def test_invalid_remediation_settings_are_config_errors(env: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(OperatorError, match=message):
        config.load(None, env, {})


def test_valves_hold_back_in_order() -> None:
    r = RemediationSettings(max_actions_per_cycle=1, min_wedged_seconds=600, max_attempts=2,
                            cooldown_seconds=1800, max_wedged_for_auto=3)
    now = 1_000_000.0
    cands = [Candidate(1, "refinalize", 10.0),  # too recent
             Candidate(2, "refinalize", 9999.0),  # tried twice already
             Candidate(3, "refinalize", 9999.0),  # ran 10 minutes ago
             Candidate(4, "backfill_anchors", 9999.0),  # runs
             Candidate(4, "refinalize", 9999.0)]  # over the cycle limit
    history = {(2, "refinalize"): History(2, now - 99999), (3, "refinalize"): History(1, now - 600)}
    d = valves.decide(cands, wedged=3, paused=False, settings=r, history=history, now=now)
    assert d.run == (cands[3],)
    assert dict(d.blocked) == {"paused": 0, "too_many_wedged": 0, "min_wedged_seconds": 1,
                               "max_attempts": 1, "cooldown": 1, "cycle_limit": 1}
    assert valves.decide(cands, wedged=4, paused=False, settings=r, history={},
                         now=now).blocked["too_many_wedged"] == 5
    paused = valves.decide(cands, wedged=9, paused=True, settings=r, history={}, now=now)
    assert paused.run == () and paused.blocked["paused"] == 5


def test_an_unreachable_database_means_no_leader_and_no_password_in_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    url = make_url("postgresql+psycopg://writer:s3cret@127.0.0.1:1/cj")
    lock = LeaderLock(url, 1)
    assert not lock.ensure()  # nothing listens on port 1: not leader, no exception
    assert "leader lock unavailable" in caplog.text and "s3cret" not in caplog.text
