"""Command line: serve | demo | inspect | charges | install-view | remediate | healthcheck |
check-config | assets.

This module only parses and dispatches. Flags are built from the setting declarations
(exporter.config), so a setting's flag, help, environment variable and default are written down
once and shown by --help. An OperatorError from any command prints one line on stderr and exits
2; so does a command whose optional dependencies (an extra) are not installed. `inspect` and
`remediate` of an unknown batch exit 1. Nothing printed ever holds a password.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exporter import PROG, config, logs, version
from exporter.config import Declaration, Settings
from exporter.errors import EXIT_CODE, OperatorError
from exporter.vocabulary import ACTIONS, CHARGES_FORMATS

# The settings every command that reads the CJ database accepts.
DSN_KEYS = ("dsn", "dsn_file")
WRITE_DSN_KEYS = ("remediation.write_dsn", "remediation.write_dsn_file")
LOG_KEYS = ("log_level", "log_format")
HEALTHCHECK_KEYS = ("listen_address", "web_config_file", "healthcheck.credentials_file",
                    "healthcheck.cert_file", "healthcheck.key_file", "healthcheck.timeout_seconds")
# The demo's own defaults: local only, and quick enough to watch.
DEMO_DEFAULTS = {"listen_address": f"127.0.0.1:{config.DEFAULT_PORT}",
                 "poll_interval_seconds": "5s"}
# Optional dependencies -> the extra that brings them (pyproject.toml).
EXTRA_OF = {"choix": "remediation", "numpy": "remediation", "scipy": "remediation",
            "pgserver": "demo", "grafanalib": "dashboards"}
log = logging.getLogger("exporter")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_CODE
    try:
        return int(args.func(args))
    except OperatorError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_CODE
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"{PROG}: error: `{args.command}` needs the [{extra}] extra ({exc.name} is "
              f"missing): pip install 'cj-health-exporter[{extra}]'", file=sys.stderr)
        return EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Prometheus exporter for the health of Comparative Judgement "
        "batches. Settings: a YAML file (--config), then CJ_HEALTH_* variables, then flags.")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {version()} (python {platform.python_version()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="poll the CJ database and serve /metrics")
    _setting_flags(serve, (d for d in config.declarations() if "." not in d.key))
    serve.set_defaults(func=cmd_serve)
    _demo_parser(sub)
    inspect = sub.add_parser("inspect", help="show one batch by cj_batch_id or bos_batch_id")
    inspect.add_argument("batch", help="a cj_batch_id or a bos_batch_id (all its CJ runs)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _setting_flags(inspect, _declared(DSN_KEYS + LOG_KEYS))
    inspect.set_defaults(func=cmd_inspect)
    _charges_parser(sub)
    install = sub.add_parser("install-view", help="create or replace the views (idempotent)")
    _setting_flags(install, _declared(DSN_KEYS + LOG_KEYS))
    install.add_argument("--no-indexes", action="store_true",
                         help="skip the recommended indexes (CREATE INDEX CONCURRENTLY)")
    install.add_argument("--remediation", action="store_true",
                         help="also create the finalizer's audit and pause tables")
    install.set_defaults(func=cmd_install_view)
    _remediate_parser(sub)
    _healthcheck_parser(sub)
    _check_config_parser(sub)
    _assets_parser(sub)
    return parser


def _demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run on a throwaway embedded Postgres with demo batches")
    _setting_flags(demo, _declared(("listen_address", "poll_interval_seconds", *LOG_KEYS)),
                   config_file=False, defaults=DEMO_DEFAULTS)
    demo.add_argument("--remediation", action="store_true",
                      help="let the finalizer heal the demo's wedged batches (not a dry run)")
    demo.set_defaults(func=cmd_demo)


def _charges_parser(sub: Any) -> None:
    charges = sub.add_parser(
        "charges", help="list every CJ run charged more than once, with the excess to refund")
    charges.add_argument("--since", metavar="DATE",
                         help="only runs with a charge on or after this UTC day (YYYY-MM-DD)")
    charges.add_argument("--format", choices=CHARGES_FORMATS, default="table",
                         help="table for people, json or csv for a refund script [default table]")
    _setting_flags(charges, _declared(DSN_KEYS + LOG_KEYS))
    charges.set_defaults(func=cmd_charges)


def _remediate_parser(sub: Any) -> None:
    remediate = sub.add_parser(
        "remediate", help="run one finalizer action on one batch (a dry run without --yes)")
    _setting_flags(remediate, _declared(DSN_KEYS + WRITE_DSN_KEYS + LOG_KEYS))
    what = remediate.add_mutually_exclusive_group(required=True)
    what.add_argument("--batch", metavar="BATCH",
                      help="cj_batch_id (or a bos_batch_id with one CJ run) to act on")
    what.add_argument("--pause", metavar="REASON", help="pause all remediation, every replica")
    what.add_argument("--resume", action="store_true", help="lift the pause")
    remediate.add_argument("--action", choices=ACTIONS, help="with --batch")
    remediate.add_argument("--yes", action="store_true", help="apply (default: dry run)")
    remediate.set_defaults(func=cmd_remediate)


def _healthcheck_parser(sub: Any) -> None:
    check = sub.add_parser(
        "healthcheck", help="ask the running exporter whether it is alive (or --ready); "
        "exit 0 or 1 with one line (container and Kubernetes probes)")
    check.add_argument("--ready", action="store_true",
                       help="readiness instead of liveness: fail while the snapshot is stale")
    _setting_flags(check, _declared(HEALTHCHECK_KEYS))
    check.set_defaults(func=cmd_healthcheck)


def _check_config_parser(sub: Any) -> None:
    check = sub.add_parser(
        "check-config", help="validate every setting, the web config and the DSN files; "
        "exit 0 or 2 (with --connect also the database, its views and grants)")
    check.add_argument("--connect", action="store_true",
                       help="also connect and check the views, the grants and, when "
                            "remediation is on, the write DSN and the audit table")
    # serve's flags and the health check's: the write DSN comes from the file or the
    # environment, as for serve
    _setting_flags(check, (d for d in config.declarations()
                           if not d.key.startswith("remediation.")))
    check.set_defaults(func=cmd_check_config)


def _assets_parser(sub: Any) -> None:
    assets = sub.add_parser(
        "assets", help="where the shipped alert rules, Alertmanager example, dashboards and "
        "roles.sql are (or write them out)")
    assets.add_argument("name", nargs="?", help="print the path of this one file only")
    assets.add_argument("--write", metavar="DIR", help="copy them all into DIR")
    assets.set_defaults(func=cmd_assets)


def _declared(keys: Iterable[str]) -> list[Declaration]:
    by_key = {d.key: d for d in config.declarations()}
    return [by_key[k] for k in keys]


def _shown_default(d: Declaration, defaults: Mapping[str, str]) -> str | None:
    if d.key in defaults:
        return defaults[d.key]
    if d.default in (None, (), ""):
        return None
    if d.type is bool:
        return "true" if d.default else "false"
    if d.duration:
        return config.format_duration(d.default)
    return str(d.default)


def flag_help(d: Declaration, defaults: Mapping[str, str] | None = None) -> str:
    """`help: one of a, b (env CJ_HEALTH_X; default 15s)` for one declared setting."""
    text = d.help
    if d.choices:
        text += f": {'one or more of' if d.type is not str else 'one of'} {', '.join(d.choices)}"
    if d.duration:
        text += " (a duration: 15s, 2m, 1h30m, or seconds)"
    shown = _shown_default(d, defaults or {})
    return f"{text} [env {d.env}" + (f"; default {shown}]" if shown is not None else "]")


def _setting_flags(p: argparse.ArgumentParser, decls: Iterable[Declaration], *,
                   config_file: bool = True, defaults: Mapping[str, str] | None = None) -> None:
    """--config, then one flag per declared setting that has one; the value stays a string
    (or None when not given) until config.load coerces and validates it."""
    if config_file:
        p.add_argument("--config", metavar="FILE",
                       help=f"YAML settings file [env {config.CONFIG_FILE_ENV}]")
    for d in decls:
        if not d.flag:
            continue
        # Old spellings (aliases) keep working; --help shows the current one only.
        for name, text in ((d.flag, flag_help(d, defaults)),
                           *((alias, argparse.SUPPRESS) for alias in d.aliases)):
            if d.type is bool:
                p.add_argument(name, dest=d.key, action="store_const", const="true", help=text)
            else:
                metavar = "DURATION" if d.duration else d.key.rpartition(".")[2].upper()
                p.add_argument(name, dest=d.key, metavar=metavar, help=text)


def load_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                  quiet: bool = False) -> Settings:
    """Settings from --config (or CJ_HEALTH_CONFIG_FILE), the environment and the flags; sets
    up logging from them, then logs what was ignored (unknown CJ_HEALTH_* variables)."""
    env = os.environ if environ is None else environ
    flags = {d.key: getattr(args, d.key, None) for d in config.declarations() if d.flag}
    warnings: list[str] = []
    config_file = getattr(args, "config", None) or env.get(config.CONFIG_FILE_ENV) or None
    settings = config.load(config_file, env, flags, warn=warnings.append)
    logs.setup(settings.log_level, settings.log_format)
    if not quiet:
        for line in warnings:
            log.warning(line)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from exporter import service

    return service.serve(load_settings(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import command

    flags = {**DEMO_DEFAULTS, **{d.key: getattr(args, d.key) for d in config.declarations()
                                 if getattr(args, d.key, None) is not None}}
    settings = config.load(None, {}, flags)  # the demo reads no file and no environment
    logs.setup(settings.log_level, settings.log_format)
    return command.run(settings, remediation=args.remediation)


def cmd_inspect(args: argparse.Namespace) -> int:
    from exporter.commands import inspect

    return inspect.run(load_settings(args), args.batch, args.json)


def cmd_charges(args: argparse.Namespace) -> int:
    from exporter.commands import charges

    return charges.run(load_settings(args), args.since, args.format)


def cmd_install_view(args: argparse.Namespace) -> int:
    from exporter.commands import install_view

    return install_view.run(load_settings(args), indexes=not args.no_indexes,
                            remediation=args.remediation)


def cmd_remediate(args: argparse.Namespace) -> int:
    from exporter.commands import remediate

    return remediate.run(load_settings(args), batch=args.batch, action=args.action,
                         yes=args.yes, pause=args.pause, resume=args.resume)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from exporter.commands import healthcheck

    # quiet: the serving process already logged what its environment holds; a probe that runs
    # every few seconds must print its one line and nothing else. Exit 1, never 2: Docker
    # reserves 2 (docs.docker.com, HEALTHCHECK).
    try:
        settings = load_settings(args, quiet=True)
    except OperatorError as exc:
        print(f"unhealthy: {exc}")
        return healthcheck.UNHEALTHY
    return healthcheck.run(settings, ready=args.ready)


def cmd_check_config(args: argparse.Namespace) -> int:
    from exporter.commands import check_config

    return check_config.run(load_settings(args), connect_db=args.connect)


def cmd_assets(args: argparse.Namespace) -> int:
    from exporter.commands import assets

    return assets.run(args.name, args.write)
