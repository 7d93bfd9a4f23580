"""Settings: a YAML file, then CJ_HEALTH_* environment variables, then CLI flags (flags win).

Each setting is declared once, as a field of `Settings` (or of a nested section such as
`RemediationSettings`): its name is the YAML key, its type and default are the field's, and
`setting()` attaches the help text, the command-line flag and the validation rule. The
environment variable is derived from the name (`CJ_HEALTH_<NAME>`, `CJ_HEALTH_REMEDIATION_<NAME>`),
the CLI flags and their help are built from these declarations (exporter.cli), and a test holds
README's settings table to them.

Every value is validated here, once, with an error that names the setting, the bad value and
where it came from. Unknown keys in the YAML file are errors: a typo there must not silently fall
back to a default. Unknown CJ_HEALTH_* environment variables are only warnings: the environment
is shared with things we do not control (Kubernetes injects CJ_HEALTH_EXPORTER_SERVICE_HOST and
friends for a Service named cj-health-exporter), and refusing to start over them turned a
harmless variable into a pod that never starts.

Every setting whose name ends in `_seconds` takes a duration: a number of seconds (`90`, `0.5`) or
Prometheus' notation (`15s`, `2m`, `1h30m`, `7d`), in the file, the environment and on flags.

`dsn` and `dsn_file` are two spellings of one setting (likewise the write DSN): a layer that sets
one replaces the other from the layers below it, so `--dsn-file` beats a `dsn:` in the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

from exporter import yamlfile
from exporter.errors import OperatorError
from exporter.vocabulary import ACTIONS, AUTO_ELECTION, LEADER_ELECTIONS

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ENV_PREFIX = "CJ_HEALTH_"
# The one CJ_HEALTH_* variable that is not a setting: the default of --config, so that a
# container's health check (`cj-health-exporter healthcheck`) reads the file `serve` reads.
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
DEFAULT_PORT = 10124
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")
# Paths the exporter serves besides the telemetry path (exporter.web.pages).
RESERVED_PATHS = ("/", "/healthz", "/-/healthy", "/-/ready")
T = TypeVar("T")
Warn = Callable[[str], None]

# Validation rules a declaration may name.
POSITIVE = "positive"  # > 0
NOT_NEGATIVE = "not_negative"  # >= 0


def setting(default: Any, help: str, *, flag: str | None = None, rule: str | None = None,
            choices: tuple[str, ...] = (), secret: bool = False,
            aliases: tuple[str, ...] = ()) -> Any:
    """Declare a setting: its default, help text, CLI flag (None: file and env only), rule.

    secret=True keeps the value out of reprs: a DSN may hold a password, and settings end up in
    reprs (tracebacks with locals, debuggers, a careless log line). aliases: older spellings of
    the flag that keep working (not shown in --help).
    """
    meta = {"help": help, "flag": flag, "rule": rule, "choices": choices, "aliases": aliases}
    if isinstance(default, tuple | list | dict):
        return field(default_factory=lambda: default, repr=not secret, metadata=meta)
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class RemediationSettings:
    """The finalizer acts only when enabled AND given a write DSN AND a list of actions.

    See docs/finalizer.md for what each valve does.
    """

    enabled: bool = setting(False, "let the finalizer act (also needs a write DSN and actions)")
    write_dsn: str | None = setting(None, "postgresql:// URL of the finalizer's write role",
                                    flag="--write-dsn", secret=True)
    write_dsn_file: str | None = setting(None, "file holding the write DSN",
                                         flag="--write-dsn-file")
    actions: tuple[str, ...] = setting((), "actions the finalizer may take: "
                                           + ", ".join(ACTIONS), choices=ACTIONS)
    dry_run: bool = setting(True, "plan and audit without changing a CJ table")
    paused: bool = setting(False, "take no action at all (so does a cj_health_remediation_pause"
                                  " row)")
    interval_seconds: float = setting(60.0, "time between remediation cycles", rule=POSITIVE)
    max_actions_per_cycle: int = setting(5, "at most this many actions per cycle", rule=POSITIVE)
    min_wedged_seconds: float = setting(600.0, "a batch must be quiet this long first",
                                        rule=NOT_NEGATIVE)
    max_wedged_for_auto: int = setting(5, "no action while more batches than this are wedged",
                                       rule=NOT_NEGATIVE)
    max_attempts: int = setting(3, "attempts per batch and action", rule=POSITIVE)
    cooldown_seconds: float = setting(1800.0, "time between two runs of an action on a batch",
                                      rule=NOT_NEGATIVE)
    replica_id: str | None = setting(None, "name of this replica in the audit table"
                                           " (default host:pid)")
    leader_election: str = setting(AUTO_ELECTION, "how replicas elect the one that acts: auto"
                                   " (advisory lock; held in an open transaction behind a"
                                   " pooler), transaction, none (every replica acts)",
                                   choices=LEADER_ELECTIONS)
    # What the CJ service writes into a result event when it cannot tell (its settings
    # DEFAULT_LLM_MODEL, DEFAULT_LLM_PROVIDER, DEFAULT_LLM_TEMPERATURE, overridable upstream
    # by CJ_ASSESSMENT_SERVICE_*): set these to the service's values if it overrides them.
    default_llm_model: str = setting("gpt-5.1", "model_used of a result event when no"
                                                " comparison names a model (the CJ service's"
                                                " DEFAULT_LLM_MODEL)")
    default_llm_provider: str = setting("openai", "model_provider of a result event when no"
                                                  " comparison names one (the CJ service's"
                                                  " DEFAULT_LLM_PROVIDER)")
    llm_temperature: float = setting(0.1, "assessment_metadata.llm_temperature of a result"
                                          " event (the CJ service's DEFAULT_LLM_TEMPERATURE)",
                                     rule=NOT_NEGATIVE)


@dataclass(frozen=True)
class HealthcheckSettings:
    """What `cj-health-exporter healthcheck` needs beyond the web config `serve` reads: the
    credentials to present when that web config asks for them (docs/security.md)."""

    credentials_file: str | None = setting(
        None, "file holding USER:PASSWORD (one line) for the web config's basic auth",
        flag="--healthcheck.credentials-file")
    cert_file: str | None = setting(
        None, "client certificate to present when the web config requires one",
        flag="--healthcheck.cert-file")
    key_file: str | None = setting(None, "key of --healthcheck.cert-file",
                                   flag="--healthcheck.key-file")
    timeout_seconds: float = setting(3.0, "give up on the endpoint after this long",
                                     flag="--healthcheck.timeout", rule=POSITIVE)


@dataclass(frozen=True)
class Settings:
    dsn: str | None = setting(None, "postgresql:// URL of the read-only polling role",
                              flag="--dsn", secret=True)
    dsn_file: str | None = setting(None, "file holding the DSN (secrets)", flag="--dsn-file")
    listen_address: str = setting(f":{DEFAULT_PORT}", "HOST:PORT to serve on",
                                  flag="--web.listen-address")
    telemetry_path: str = setting("/metrics", "path under which to expose metrics",
                                  flag="--web.telemetry-path")
    poll_interval_seconds: float = setting(15.0, "time between polls", flag="--poll-interval",
                                           rule=POSITIVE)
    statement_timeout_seconds: float = setting(10.0, "server-side statement timeout of a poll",
                                               flag="--statement-timeout", rule=POSITIVE)
    lock_timeout_seconds: float = setting(2.0, "server-side lock timeout of a poll",
                                          rule=POSITIVE)
    connect_timeout_seconds: int = setting(5, "time to wait for a database connection (whole"
                                              " seconds)", rule=POSITIVE)
    stale_after: int = setting(3, "poll intervals without success before per-batch series are"
                                  " withdrawn", flag="--stale-after", rule=POSITIVE)
    recent_window_seconds: float = setting(3600.0, "finished healthy batches stay exported this"
                                                   " long", flag="--recent-window", rule=POSITIVE)
    lookback_seconds: float = setting(7 * 86400.0, "the watched set: unfinished batches plus"
                                                   " those active this recently",
                                      flag="--lookback", rule=POSITIVE)
    max_batches: int = setting(5000, "cap on exported batches (problem batches first)",
                               flag="--max-batches", rule=POSITIVE)
    full_poll_interval_seconds: float = setting(
        300.0, "seconds between full polls; the polls between re-read only the batches whose"
               " rows changed (0: every poll is full)", flag="--full-poll-interval",
        rule=NOT_NEGATIVE)
    commit_lag_seconds: float = setting(
        60.0, "how long a CJ service transaction may stay open after stamping a row and still"
              " have the change seen by the next poll (later commits: by the next full poll)",
        rule=POSITIVE)
    fail_fast: bool = setting(False, "exit 2 at start when the database cannot be polled"
                                     " (unreachable, views missing, grants missing) instead of"
                                     " serving cj_health_up 0 and retrying", flag="--fail-fast")
    log_level: str = setting("info", "log level", flag="--log.level", choices=LOG_LEVELS,
                             aliases=("--log-level",))
    log_format: str = setting("logfmt", "log line format (json: one object per line)",
                              flag="--log.format", choices=LOG_FORMATS)
    web_config_file: str | None = setting(None, "exporter-toolkit web config: TLS, client"
                                                " certificates, basic auth",
                                          flag="--web.config.file")
    healthcheck: HealthcheckSettings = field(default_factory=HealthcheckSettings)
    remediation: RemediationSettings = field(default_factory=RemediationSettings)

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after * self.poll_interval_seconds

    @property
    def unsignalled_bound_seconds(self) -> float:
        """Longest a change no column signals can stay unseen (docs/performance.md): a full poll
        runs on the first tick at most half an interval before full_poll_interval is up, so the
        next one has published within full_poll_interval + poll_interval."""
        if self.full_poll_interval_seconds <= self.poll_interval_seconds:
            return self.poll_interval_seconds  # every poll is full
        return self.full_poll_interval_seconds + self.poll_interval_seconds

    def finalizer(self) -> FinalizerSettings:
        """What the finalizer needs, and nothing else."""
        return FinalizerSettings(
            remediation=self.remediation, lookback_seconds=self.lookback_seconds,
            statement_timeout_seconds=self.statement_timeout_seconds,
            lock_timeout_seconds=self.lock_timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            dsn=self.dsn, dsn_file=self.dsn_file)


@dataclass(frozen=True)
class FinalizerSettings:
    """The finalizer's own settings: exporter.finalizer never sees the whole Settings."""

    remediation: RemediationSettings
    lookback_seconds: float
    statement_timeout_seconds: float
    lock_timeout_seconds: float
    connect_timeout_seconds: int
    # The read DSN: a dry run of `remediate` without a write DSN plans on it.
    dsn: str | None = field(default=None, repr=False)
    dsn_file: str | None = None


@dataclass(frozen=True)
class Declaration:
    """One setting as declared: dotted key, env variable, flag, type, default, help, rule."""

    key: str
    env: str
    flag: str | None
    type: Any
    default: Any
    help: str
    rule: str | None
    choices: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def duration(self) -> bool:
        """Takes a duration (`15s`, `2m`) as well as a number of seconds."""
        return self.key.endswith("_seconds")


def declarations(cls: type = Settings, prefix: str = "") -> Iterator[Declaration]:
    """Every setting of `cls`, nested ones as `remediation.x`."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from declarations(hints[f.name], f"{prefix}{f.name}.")
            continue
        key = f"{prefix}{f.name}"
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        yield Declaration(key, ENV_PREFIX + key.replace(".", "_").upper(), f.metadata["flag"],
                          hints[f.name], default, f.metadata["help"], f.metadata["rule"],
                          f.metadata["choices"], f.metadata["aliases"])


def declaration(key: str) -> Declaration:
    return next(d for d in declarations() if d.key == key)


# Pairs of keys that spell one setting: a layer that sets one drops the other from below.
ALTERNATIVES = (("dsn", "dsn_file"), ("remediation.write_dsn", "remediation.write_dsn_file"))


def load(
    config_file: str | None, environ: Mapping[str, str], flags: Mapping[str, Any],
    warn: Warn | None = None,
) -> Settings:
    """Merge file < env < flags into validated Settings, or raise OperatorError.

    `flags` maps dotted keys (`poll_interval_seconds`, `remediation.write_dsn`) to the values
    given on the command line; None means "not given". `warn` receives one line per thing that
    is ignored but probably a mistake (an unknown CJ_HEALTH_* variable); without it they are
    dropped.
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = []
    if config_file:
        layers.append((_read_yaml(config_file), f"config file {config_file}"))
    layers.append((_from_env(environ, warn or (lambda _: None)), "environment"))
    layers.append((_nest({k: v for k, v in flags.items() if v is not None}), "command line"))
    for layer, source in layers:
        _replace_alternatives(raw, layer, source)
        _merge(raw, sources, layer, source)
    settings = _build(Settings, raw, sources, prefix="")
    _validate(settings)
    return settings


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, dot, tail = key.partition(".")
        if dot:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def _given(raw: Mapping[str, Any], key: str) -> bool:
    head, _, tail = key.rpartition(".")
    section = raw.get(head, {}) if head else raw
    return isinstance(section, Mapping) and section.get(tail) not in (None, "")


def _replace_alternatives(below: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    for first, second in ALTERNATIVES:
        if _given(layer, first) and _given(layer, second):
            raise OperatorError(f"give either {first} or {second}, not both (both from {source})")
        for mine, other in ((first, second), (second, first)):
            if _given(layer, mine):
                head, _, tail = other.rpartition(".")
                section = below.get(head, {}) if head else below
                if isinstance(section, dict):
                    section.pop(tail, None)


def _read_yaml(path: str) -> dict[str, Any]:
    data = yamlfile.read(path, f"config file {path}")
    if not isinstance(data, dict):
        raise OperatorError(f"config file {path} must hold a mapping of settings")
    return data


# The variables Kubernetes injects for every Service in the namespace (service links): for a
# Service `cj-health-exporter` they are CJ_HEALTH_EXPORTER_SERVICE_HOST, ..._SERVICE_PORT,
# ..._PORT, ..._PORT_10124_TCP and its _PROTO, _PORT and _ADDR. No setting ends like these.
SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)")


def _from_env(environ: Mapping[str, str], warn: Warn) -> dict[str, Any]:
    """CJ_HEALTH_POLL_INTERVAL_SECONDS -> poll_interval_seconds; REMEDIATION_* nests.

    Unknown CJ_HEALTH_* variables are reported to `warn` and ignored (see the module doc).
    """
    by_env = {d.env: d.key for d in declarations()}
    flat: dict[str, Any] = {}
    links: list[str] = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        if name in by_env:
            flat[by_env[name]] = value
        elif SERVICE_LINK.fullmatch(name):
            links.append(name)
        else:
            near = difflib.get_close_matches(name, [*by_env, CONFIG_FILE_ENV], n=1, cutoff=0.8)
            hint = f" (did you mean {near[0]}?)" if near else ""
            warn(f"ignoring unknown environment variable {name}{hint}")
    if links:
        warn(f"ignoring {len(links)} Kubernetes service-link variables ({', '.join(links)}): "
             "they are not settings; `enableServiceLinks: false` on the pod removes them")
    return _nest(flat)


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
        raise OperatorError(f"{prefix.rstrip('.')} must be a mapping")
    hints = get_type_hints(cls)
    known = set(hints)  # every field of these dataclasses is annotated
    for key in raw:
        if key not in known:
            where = sources.get(f"{prefix}{key}", "config")
            raise OperatorError(f"unknown setting {prefix}{key!s} (from {where})")
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
    where = sources.get(name, "config")
    try:
        if optional and value in (None, ""):
            return None
        if name.endswith("_seconds"):
            return _seconds(value, target)
        return _convert(value, target)
    except (TypeError, ValueError):
        if name.endswith("_seconds"):
            kind = ("a whole number of seconds or a duration like 5s"
                    if target is int else "a duration like 15s, 2m, 1h30m or a number of seconds")
        else:
            kind = getattr(target, "__name__", str(target))
        raise OperatorError(f"{name} must be {kind}, got {value!r} (from {where})") from None


def _seconds(value: Any, target: Any) -> float | int:
    seconds = parse_duration(value)
    if target is int:
        if not seconds.is_integer():
            raise ValueError(value)
        return int(seconds)
    return seconds


# Prometheus' duration notation (model.ParseDuration): units largest first, each at most once.
DURATION_UNITS = (("y", 365 * 86400.0), ("w", 7 * 86400.0), ("d", 86400.0), ("h", 3600.0),
                  ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_DURATION = re.compile("".join(rf"(?:(\d+){unit})?" for unit, _ in DURATION_UNITS))


def parse_duration(value: Any) -> float:
    """`15s`, `2m`, `1h30m`, `7d`, `500ms`, or a plain number of seconds (`90`, `0.5`)."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.fullmatch(text)
            if not text or match is None:
                raise ValueError(value) from None
            seconds = sum(int(n) * size for n, (_, size) in zip(match.groups(), DURATION_UNITS,
                                                                strict=True) if n)
    if not math.isfinite(seconds):
        raise ValueError(value)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling in d/h/m/s/ms: 604800 -> 7d, 90 -> 1m30s, 0.5 -> 500ms."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6 or millis < 0:
        return f"{seconds}s"
    out = []
    for unit, size in (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


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


def _value(s: Settings, key: str) -> Any:
    obj: Any = s
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _validate(s: Settings) -> None:
    for d in declarations():
        _check_rule(d, _value(s, d.key))
    if s.lookback_seconds < s.recent_window_seconds:
        raise OperatorError("lookback_seconds must be at least recent_window_seconds")
    parse_listen_address(s.listen_address)
    check_telemetry_path(s.telemetry_path)
    for first, second in ALTERNATIVES:
        if _value(s, first) and _value(s, second):
            raise OperatorError(f"give either {first} or {second}, not both")
    if s.remediation.write_dsn:
        parse_dsn(s.remediation.write_dsn, "remediation.write_dsn")
    if bool(s.healthcheck.cert_file) != bool(s.healthcheck.key_file):
        raise OperatorError("healthcheck.cert_file and healthcheck.key_file go together")


def _check_rule(d: Declaration, value: Any) -> None:
    if d.rule == POSITIVE and value <= 0:
        raise OperatorError(f"{d.key} must be greater than 0, got {value}")
    if d.rule == NOT_NEGATIVE and value < 0:
        raise OperatorError(f"{d.key} must not be negative, got {value}")
    if d.choices:
        values = value if isinstance(value, tuple) else (value,)
        bad = [v for v in values if v not in d.choices]
        if bad and isinstance(value, tuple):
            raise OperatorError(f"{d.key}: unknown action {bad[0]!r} "
                                f"(known: {', '.join(d.choices)})")
        if bad:
            raise OperatorError(f"{d.key} must be one of {', '.join(d.choices)}, "
                                f"got {value!r}")


def check_telemetry_path(path: str) -> str:
    """--web.telemetry-path: an absolute path that is not one of the other pages."""
    if not path.startswith("/") or path in RESERVED_PATHS or any(c in path for c in "?# "):
        raise OperatorError(f"web.telemetry-path must be a path like /metrics, other than "
                            f"{', '.join(RESERVED_PATHS)} (no query), got {path!r}")
    return path


def parse_listen_address(address: str) -> tuple[str, int]:
    """node_exporter's HOST:PORT spelling: ':10124', '127.0.0.1:10124', '[::1]:10124'."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OperatorError(f"web.listen-address must be HOST:PORT, got {address!r}")
    if not 0 <= int(port) < 65536:
        raise OperatorError(f"web.listen-address: port {port} is out of range (0-65535)")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve_dsn(dsn: str | None, dsn_file: str | None, what: str = "dsn") -> URL:
    """The DSN as a SQLAlchemy URL on the psycopg 3 driver; errors never echo the password.

    `what` is the key of the DSN setting (`dsn`, `remediation.write_dsn`, or `write_dsn` for
    short): a missing DSN is reported with every way to give it, as declared.
    """
    key = what if what in ("dsn", "remediation.write_dsn") else f"remediation.{what}"
    if dsn_file:
        try:
            dsn = Path(dsn_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OperatorError(f"cannot read {what} file {dsn_file}: {exc.strerror}") from None
    if not dsn:
        ways = [w for d in (declaration(key), declaration(f"{key}_file"))
                for w in (d.flag, d.env) if w]
        raise OperatorError(f"no {what} given: use {', '.join(ways)} "
                            f"(or {key} / {key}_file in the --config file)")
    return parse_dsn(dsn, what)


def parse_dsn(dsn: str, what: str = "dsn") -> URL:
    # Imported here: SQLAlchemy takes most of a second to import, and `healthcheck` (a probe
    # run every few seconds, often with a 1 s timeout) never needs it.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(dsn)
    except ArgumentError:
        raise OperatorError(f"{what} is not a database URL (expected postgresql://...)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise OperatorError(f"{what} must be a postgresql:// URL, got {backend}://")
    if driver not in ("", "psycopg"):
        raise OperatorError(f"{what} driver must be psycopg (psycopg 3), got +{driver}")
    return url.set(drivername="postgresql+psycopg")


def redact(url: URL) -> str:
    return url.render_as_string(hide_password=True)
