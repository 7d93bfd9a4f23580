"""Settings: a YAML file, then CJ_HEALTH_* environment variables, then CLI flags (flags win).

Every value is validated here, once, with an error that names the setting, the bad value and
where it came from. Unknown keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "CJ_HEALTH_"
DEFAULT_PORT = 10124
LOG_LEVELS = ("debug", "info", "warning", "error")
ACTIONS = ("backfill_anchors", "refinalize")
T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line meant for the operator."""


@dataclass(frozen=True)
class RemediationSettings:
    """The finalizer acts only when enabled AND given a write DSN AND a list of actions.

    dry_run (the default) plans and audits without changing a CJ table. The valves: at most
    max_actions_per_cycle actions per cycle; a batch quiet for min_wedged_seconds first; no
    action at all while more than max_wedged_for_auto batches are wedged; max_attempts per
    batch and action; cooldown_seconds between two runs of an action on a batch; paused stops
    everything (so does a row in cj_health_remediation_pause). See docs/finalizer.md.
    """

    enabled: bool = False
    write_dsn: str | None = field(default=None, repr=False)  # may hold a password
    write_dsn_file: str | None = None
    actions: tuple[str, ...] = ()
    dry_run: bool = True
    paused: bool = False
    interval_seconds: float = 60.0
    max_actions_per_cycle: int = 5
    min_wedged_seconds: float = 600.0
    max_wedged_for_auto: int = 5
    max_attempts: int = 3
    cooldown_seconds: float = 1800.0
    replica_id: str | None = None


@dataclass(frozen=True)
class Settings:
    # repr=False: a DSN may hold a password, and settings end up in reprs (tracebacks with
    # locals, debuggers, a careless log line); the *_file variants hold only a path.
    dsn: str | None = field(default=None, repr=False)
    dsn_file: str | None = None
    listen_address: str = f":{DEFAULT_PORT}"
    poll_interval_seconds: float = 15.0
    statement_timeout_seconds: float = 10.0
    lock_timeout_seconds: float = 2.0
    connect_timeout_seconds: int = 5
    stale_after: int = 3
    recent_window_seconds: float = 3600.0
    lookback_seconds: float = 7 * 86400.0
    max_batches: int = 5000
    log_level: str = "info"
    web_config_file: str | None = None
    remediation: RemediationSettings = field(default_factory=RemediationSettings)

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after * self.poll_interval_seconds


def load(
    config_file: str | None, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> Settings:
    """Merge file < env < flags into validated Settings, or raise ConfigError."""
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file:
        _merge(raw, sources, _read_yaml(config_file), f"config file {config_file}")
    _merge(raw, sources, _from_env(environ), "environment")
    _merge(raw, sources, {k: v for k, v in flags.items() if v is not None}, "command line")
    settings = _build(Settings, raw, sources, prefix="")
    _validate(settings)
    return settings


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """CJ_HEALTH_POLL_INTERVAL_SECONDS -> poll_interval_seconds; REMEDIATION_* nests."""
    top = {f.name for f in dataclasses.fields(Settings)}
    nested = {f.name for f in dataclasses.fields(RemediationSettings)}
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        sub = key.removeprefix("remediation_")
        if key.startswith("remediation_") and sub in nested:
            out.setdefault("remediation", {})[sub] = value
        elif key in top and key != "remediation":
            out[key] = value
        else:
            raise ConfigError(f"unknown environment variable {name}")
    return out


def _merge(raw: dict[str, Any], sources: dict[str, str], new: Mapping[str, Any],
           source: str, prefix: str = "") -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(raw.get(key, {}), dict):
            _merge(raw.setdefault(key, {}), sources, value, source, f"{prefix}{key}.")
        else:
            raw[key] = value
            sources[f"{prefix}{key}"] = source


def _build(cls: type[T], raw: Mapping[str, Any], sources: Mapping[str, str],
           prefix: str) -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')} must be a mapping")
    hints = get_type_hints(cls)
    known = set(hints)  # every field of these dataclasses is annotated
    for key in raw:
        if key not in known:
            where = sources.get(f"{prefix}{key}", "config")
            raise ConfigError(f"unknown setting {prefix}{key!s} (from {where})")
    values = {}
    for key, value in raw.items():
        if dataclasses.is_dataclass(hints[key]):
            values[key] = _build(hints[key], value, sources, f"{prefix}{key}.")
        else:
            values[key] = _coerce(f"{prefix}{key}", value, hints[key], sources)
    return cls(**values)


def _coerce(name: str, value: Any, hint: Any, sources: Mapping[str, str]) -> Any:
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    target = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    try:
        if optional and value in (None, ""):
            return None
        return _convert(value, target)
    except (TypeError, ValueError):
        kind = getattr(target, "__name__", str(target))
        raise ConfigError(
            f"{name} must be {kind}, got {value!r} (from {sources.get(name, 'config')})"
        ) from None


def _convert(value: Any, target: Any) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if target in (int, float):
        if isinstance(value, bool):
            raise TypeError(value)
        return target(value)
    if get_origin(target) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise TypeError(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    if target is str:
        if isinstance(value, dict | list):
            raise TypeError(value)
        return str(value)
    raise TypeError(value)


def _validate(s: Settings) -> None:
    positive = ("poll_interval_seconds", "statement_timeout_seconds", "lock_timeout_seconds",
                "connect_timeout_seconds", "stale_after", "recent_window_seconds",
                "lookback_seconds", "max_batches")
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be greater than 0, got {getattr(s, name)}")
    if s.lookback_seconds < s.recent_window_seconds:
        raise ConfigError("lookback_seconds must be at least recent_window_seconds")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    parse_listen_address(s.listen_address)
    if s.dsn and s.dsn_file:
        raise ConfigError("give either dsn or dsn_file, not both")
    if s.web_config_file:
        from exporter import webconfig  # it imports this module: import it only when needed

        webconfig.load(s.web_config_file)
    _validate_remediation(s.remediation)


def _validate_remediation(r: RemediationSettings) -> None:
    bad = [a for a in r.actions if a not in ACTIONS]
    if bad:
        raise ConfigError(f"remediation.actions: unknown action {bad[0]!r} "
                          f"(known: {', '.join(ACTIONS)})")
    if r.write_dsn and r.write_dsn_file:
        raise ConfigError("give either remediation.write_dsn or remediation.write_dsn_file, "
                          "not both")
    if r.write_dsn:
        parse_dsn(r.write_dsn, "remediation.write_dsn")
    for name in ("interval_seconds", "max_actions_per_cycle", "max_attempts"):
        if getattr(r, name) <= 0:
            raise ConfigError(f"remediation.{name} must be greater than 0, "
                              f"got {getattr(r, name)}")
    for name in ("min_wedged_seconds", "max_wedged_for_auto", "cooldown_seconds"):
        if getattr(r, name) < 0:
            raise ConfigError(f"remediation.{name} must not be negative, got {getattr(r, name)}")


def parse_listen_address(address: str) -> tuple[str, int]:
    """node_exporter's HOST:PORT spelling: ':10124', '127.0.0.1:10124', '[::1]:10124'."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"web.listen-address must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve_dsn(dsn: str | None, dsn_file: str | None, what: str = "dsn") -> URL:
    """The DSN as a SQLAlchemy URL on the psycopg 3 driver; errors never echo the password."""
    if dsn_file:
        try:
            dsn = Path(dsn_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {what} file {dsn_file}: {exc.strerror}") from None
    if not dsn:
        raise ConfigError(f"no {what} given: use --{what.replace('_', '-')} or "
                          f"{ENV_PREFIX}{what.upper()}")
    return parse_dsn(dsn, what)


def parse_dsn(dsn: str, what: str = "dsn") -> URL:
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ConfigError(f"{what} is not a database URL (expected postgresql://...)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(f"{what} must be a postgresql:// URL, got {backend}://")
    if driver not in ("", "psycopg"):
        raise ConfigError(f"{what} driver must be psycopg (psycopg 3), got +{driver}")
    return url.set(drivername="postgresql+psycopg")


def redact(url: URL) -> str:
    return url.render_as_string(hide_password=True)
