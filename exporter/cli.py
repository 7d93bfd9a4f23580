"""Command line: serve | demo | inspect | charges | install-view | remediate.

This module only parses and dispatches. Flags are built from the setting declarations
(exporter.config), so a setting's flag, help and default are written down once. An
OperatorError from any command prints one line on stderr and exits 2; `inspect` of an unknown
batch exits 1. Nothing printed ever holds a password.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from exporter import PROG, config
from exporter.config import Declaration, Settings
from exporter.errors import EXIT_CODE, OperatorError
from exporter.vocabulary import ACTIONS

# The settings every command that reads the CJ database accepts.
DSN_KEYS = ("dsn", "dsn_file")
WRITE_DSN_KEYS = ("remediation.write_dsn", "remediation.write_dsn_file")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except OperatorError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="poll the CJ database and serve /metrics")
    _setting_flags(serve, (d for d in config.declarations() if "." not in d.key))
    serve.set_defaults(func=cmd_serve)
    _demo_parser(sub)
    inspect = sub.add_parser("inspect", help="show one batch by cj_batch_id or bos_batch_id")
    inspect.add_argument("batch")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _setting_flags(inspect, _declared(DSN_KEYS))
    inspect.set_defaults(func=cmd_inspect)
    _charges_parser(sub)
    install = sub.add_parser("install-view", help="create or replace the views (idempotent)")
    _setting_flags(install, _declared(DSN_KEYS))
    install.add_argument("--no-indexes", action="store_true",
                         help="skip the recommended indexes (CREATE INDEX CONCURRENTLY)")
    install.add_argument("--remediation", action="store_true",
                         help="also create the finalizer's audit and pause tables")
    install.set_defaults(func=cmd_install_view)
    _remediate_parser(sub)
    return parser


def _demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run on a throwaway embedded Postgres with demo batches")
    demo.add_argument("--web.listen-address", dest="listen_address",
                      default=f"127.0.0.1:{config.DEFAULT_PORT}")
    demo.add_argument("--poll-interval", dest="poll_interval_seconds", type=float, default=5.0)
    demo.add_argument("--log-level", dest="log_level", default="info")
    demo.add_argument("--remediation", action="store_true",
                      help="let the finalizer heal the demo's wedged batches (not a dry run)")
    demo.set_defaults(func=cmd_demo)


def _charges_parser(sub: Any) -> None:
    from exporter.commands.charges import FORMATS

    charges = sub.add_parser(
        "charges", help="list every CJ run charged more than once, with the excess to refund")
    charges.add_argument("--since", metavar="DATE",
                         help="only runs with a charge on or after this UTC day (YYYY-MM-DD)")
    charges.add_argument("--format", choices=FORMATS, default="table")
    _setting_flags(charges, _declared(DSN_KEYS))
    charges.set_defaults(func=cmd_charges)


def _remediate_parser(sub: Any) -> None:
    remediate = sub.add_parser(
        "remediate", help="run one finalizer action on one batch (a dry run without --yes)")
    _setting_flags(remediate, _declared(DSN_KEYS + WRITE_DSN_KEYS))
    what = remediate.add_mutually_exclusive_group(required=True)
    what.add_argument("--batch", type=int, help="cj_batch_id to act on (with --action)")
    what.add_argument("--pause", metavar="REASON", help="pause all remediation, every replica")
    what.add_argument("--resume", action="store_true", help="lift the pause")
    remediate.add_argument("--action", choices=ACTIONS)
    remediate.add_argument("--yes", action="store_true", help="apply (default: dry run)")
    remediate.set_defaults(func=cmd_remediate)


def _declared(keys: Iterable[str]) -> list[Declaration]:
    by_key = {d.key: d for d in config.declarations()}
    return [by_key[k] for k in keys]


def _setting_flags(p: argparse.ArgumentParser, decls: Iterable[Declaration]) -> None:
    """--config, then one flag per declared setting that has one; the value stays a string
    (or None when not given) until config.load coerces and validates it."""
    p.add_argument("--config", help="YAML settings file")
    for d in decls:
        if d.flag:
            p.add_argument(d.flag, dest=d.key, help=f"{d.help} (or {d.env})")


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {d.key: getattr(args, d.key, None) for d in config.declarations() if d.flag}
    return config.load(args.config, os.environ, flags)


def cmd_serve(args: argparse.Namespace) -> int:
    from exporter import service

    return service.serve(load_settings(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import command

    return command.run(args.listen_address, float(args.poll_interval_seconds), args.log_level,
                       remediation=args.remediation)


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
