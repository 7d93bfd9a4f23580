"""Command line: serve | demo | inspect | install-view | remediate.

Operator errors (bad config, bad DSN, unreachable database, missing view) print one line on
stderr and exit 2; `inspect` of an unknown batch exits 1. Nothing printed ever holds a password.
The finalizer (exporter.finalizer, numpy/scipy/choix) is imported only when remediation is
enabled or asked for: the exporter core never needs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import config, db
from exporter.config import ConfigError, Settings

log = logging.getLogger("exporter")
PROG = "cj-health-exporter"
# From SIGTERM to exit, at most (plus 1 s to let threads end): a restart must not wait for a
# slow query, and Kubernetes kills the pod anyway after its grace period.
SHUTDOWN_SECONDS = 4.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="poll the CJ database and serve /metrics")
    _settings_flags(serve)
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="run on a throwaway embedded Postgres with demo batches")
    demo.add_argument("--web.listen-address", dest="listen_address",
                      default=f"127.0.0.1:{config.DEFAULT_PORT}")
    demo.add_argument("--poll-interval", dest="poll_interval_seconds", type=float, default=5.0)
    demo.add_argument("--log-level", dest="log_level", default="info")
    demo.add_argument("--remediation", action="store_true",
                      help="let the finalizer heal the demo's wedged batches (not a dry run)")
    demo.set_defaults(func=cmd_demo)
    inspect = sub.add_parser("inspect", help="show one batch by cj_batch_id or bos_batch_id")
    inspect.add_argument("batch")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _dsn_flags(inspect)
    inspect.set_defaults(func=cmd_inspect)
    install = sub.add_parser("install-view", help="create or replace the views (idempotent)")
    _dsn_flags(install)
    install.add_argument("--no-indexes", action="store_true",
                         help="skip the recommended indexes (CREATE INDEX CONCURRENTLY)")
    install.add_argument("--remediation", action="store_true",
                         help="also create the finalizer's audit and pause tables")
    install.set_defaults(func=cmd_install_view)
    dashboards = sub.add_parser("generate-dashboards",
                                help="regenerate dashboards/*.json from grafanalib (checkout)")
    dashboards.add_argument("--check", action="store_true",
                            help="write nothing; exit 1 if a committed JSON is out of date")
    dashboards.add_argument("--out-dir", help="where to write (default: dashboards/)")
    dashboards.set_defaults(func=cmd_generate_dashboards)
    remediate = sub.add_parser(
        "remediate", help="run one finalizer action on one batch (a dry run without --yes)")
    _dsn_flags(remediate)
    remediate.add_argument("--write-dsn", dest="write_dsn",
                           help=f"postgresql:// URL of the write role "
                                f"(or {config.ENV_PREFIX}REMEDIATION_WRITE_DSN)")
    remediate.add_argument("--write-dsn-file", dest="write_dsn_file")
    what = remediate.add_mutually_exclusive_group(required=True)
    what.add_argument("--batch", type=int, help="cj_batch_id to act on (with --action)")
    what.add_argument("--pause", metavar="REASON", help="pause all remediation, every replica")
    what.add_argument("--resume", action="store_true", help="lift the pause")
    remediate.add_argument("--action", choices=config.ACTIONS)
    remediate.add_argument("--yes", action="store_true", help="apply (default: dry run)")
    remediate.set_defaults(func=cmd_remediate)
    return parser


def _dsn_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML settings file")
    p.add_argument("--dsn", help=f"postgresql:// URL (or {config.ENV_PREFIX}DSN)")
    p.add_argument("--dsn-file", dest="dsn_file", help="file holding the DSN")


def _settings_flags(p: argparse.ArgumentParser) -> None:
    _dsn_flags(p)
    p.add_argument("--web.listen-address", dest="listen_address",
                   help=f"HOST:PORT to serve on (default :{config.DEFAULT_PORT})")
    p.add_argument("--poll-interval", dest="poll_interval_seconds", help="seconds between polls")
    p.add_argument("--statement-timeout", dest="statement_timeout_seconds")
    p.add_argument("--stale-after", dest="stale_after", help="poll intervals")
    p.add_argument("--recent-window", dest="recent_window_seconds")
    p.add_argument("--lookback", dest="lookback_seconds")
    p.add_argument("--max-batches", dest="max_batches")
    p.add_argument("--log-level", dest="log_level")
    p.add_argument("--web.config.file", dest="web_config_file",
                   help="exporter-toolkit web config: TLS, client certificates, basic auth")


_FLAG_KEYS = ("dsn", "dsn_file", "listen_address", "poll_interval_seconds",
              "statement_timeout_seconds", "stale_after", "recent_window_seconds",
              "lookback_seconds", "max_batches", "log_level", "web_config_file")


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in _FLAG_KEYS}
    return config.load(args.config, os.environ, flags)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def connect(settings: Settings, check_view: bool = True) -> Engine:
    """Engine for the read DSN; exits 2 (ConfigError) when it cannot be used at all."""
    url = config.resolve_dsn(settings.dsn, settings.dsn_file)
    engine = db.make_engine(url, settings.connect_timeout_seconds)
    try:
        db.check_connection(engine)
    except DBAPIError as exc:
        raise ConfigError(f"cannot connect to {config.redact(url)}: "
                          f"{db.describe_error(exc)}") from None
    if check_view:
        _check_view(engine, url)
    return engine


def _check_view(engine: Engine, url: Any) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM cj_batch_health LIMIT 0"))
            conn.execute(text("SELECT 1 FROM cj_outbox_health LIMIT 0"))
    except DBAPIError as exc:
        raise ConfigError(f"the views are missing or broken in {config.redact(url)} "
                          f"({db.describe_error(exc)}): run `{PROG} install-view`") from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    setup_logging(settings.log_level)
    host, port = config.parse_listen_address(settings.listen_address)
    engine = connect(settings)
    code = run_service(settings, engine, host, port)
    # A job that ignored the cancel (say, a connect to a black-holed host) would make the
    # interpreter wait for its thread at exit. Every database change is one transaction, which
    # Postgres rolls back when the connection drops, so leaving now is safe.
    end = time.monotonic() + 1.0
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(end - time.monotonic(), 0))  # idle pool workers end within ms
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if lingering:
        log.warning("exiting with %s still running", ", ".join(lingering))
        logging.shutdown()
        os._exit(code)
    return code


def run_service(settings: Settings, engine: Engine, host: str, port: int,
                banner: str | None = None) -> int:
    """Poll + HTTP until SIGTERM or SIGINT; returns once everything is stopped."""
    from exporter.scheduler import Poller, PollScheduler
    from exporter.web import MetricsServer
    from exporter.webconfig import WebSecurity

    # Built before any job starts (config.load has validated the file already).
    security = WebSecurity(settings.web_config_file) if settings.web_config_file else None
    remediator = None
    if settings.remediation.enabled:
        from exporter.finalizer import service  # only now: the core never needs it

        remediator, _ = service.start(settings)  # None (refusal logged) when unauthorized
    if remediator:
        poller = Poller(settings, engine, extra_metrics=remediator.metrics.collect,
                        remediation_enabled=remediator.acting)
    else:  # the core exports cj_health_remediations_total at 0 (idle_remediation_families)
        poller = Poller(settings, engine)
    try:
        server = MetricsServer(
            host, port, poller.store,
            authorize=security.authorize if security else None,
            tls=security if security and security.tls_enabled else None,
            headers=security.headers if security else None)
    except OSError as exc:
        if remediator:
            remediator.close()
        raise ConfigError(f"cannot listen on {settings.listen_address}: {exc.strerror}") from None
    scheduler = PollScheduler(poller)
    if remediator:
        remediator.on_cycle_done = poller.publish  # counters show up without waiting a poll
        scheduler.add_interval_job(remediator.tick, settings.remediation.interval_seconds,
                                   "remediation")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler.start()
    server.start()
    scheme = "https" if security and security.tls_enabled else "http"
    url = f"{scheme}://{_display_host(host)}:{server.port}/metrics"
    if security:
        log.info("web config %s: %s", settings.web_config_file, security.describe())
        if security.auth_enabled and not security.tls_enabled:
            log.warning("basic auth without TLS: passwords cross the network in clear text")
    log.info("serving %s (poll every %ss)", url, settings.poll_interval_seconds)
    if banner:
        print(banner.format(url=url), flush=True)
    stop.wait()
    log.info("shutting down")
    # Jobs first (no new poll starts, a running one is cancelled server-side), then HTTP, whose
    # serve loop needs up to 0.5 s to notice.
    if not scheduler.stop(timeout=SHUTDOWN_SECONDS - 1.5):
        log.warning("the running poll did not stop in time")
    server.stop()
    if remediator:
        remediator.close()  # releases the leader lock: another replica takes over
    engine.dispose()
    return 0


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter import demo

    return demo.run(args.listen_address, float(args.poll_interval_seconds), args.log_level,
                    remediation=args.remediation)


def cmd_inspect(args: argparse.Namespace) -> int:
    from exporter import report

    settings = load_settings(args)
    engine = connect(settings)
    try:
        found = report.find(engine, args.batch)
    finally:
        engine.dispose()
    if not found:
        print(f"{PROG}: no CJ batch with cj_batch_id or bos_batch_id {args.batch!r}",
              file=sys.stderr)
        return 1
    print(report.as_json(found) if args.json else report.as_text(found))
    return 0


def cmd_install_view(args: argparse.Namespace) -> int:
    from exporter import sqlfiles

    settings = load_settings(args)
    setup_logging(settings.log_level)
    engine = connect(settings, check_view=False)
    try:
        with engine.begin() as conn:
            sqlfiles.install_views(conn)
        print("views cj_batch_health and cj_outbox_health installed")
        if args.remediation or settings.remediation.enabled:
            from exporter.finalizer import audit

            with engine.begin() as conn:
                audit.install(conn)
            print("tables cj_health_remediations and cj_health_remediation_pause installed")
        if not args.no_indexes:
            for name in sqlfiles.install_indexes(engine):
                print(f"index {name} present")
    except (DBAPIError, psycopg.Error) as exc:  # scripts run on the driver's own cursor
        raise ConfigError(f"install-view failed: {db.describe_error(exc)}") from None
    finally:
        engine.dispose()
    return 0


def cmd_remediate(args: argparse.Namespace) -> int:
    from exporter.finalizer import manual

    nested = {k: getattr(args, k) for k in ("write_dsn", "write_dsn_file")
              if getattr(args, k) is not None}
    flags: dict[str, Any] = {"dsn": args.dsn, "dsn_file": args.dsn_file}
    if nested:
        flags["remediation"] = nested
    settings = config.load(args.config, os.environ, flags)
    setup_logging(settings.log_level)
    try:
        if args.pause is not None or args.resume:
            return manual.set_pause(settings, args.pause)
        if args.action is None:
            raise ConfigError("--batch needs --action (backfill_anchors or refinalize)")
        return manual.remediate(settings, args.batch, args.action, args.yes)
    except DBAPIError as exc:
        raise ConfigError(f"remediate failed: {db.describe_error(exc)}") from None


def cmd_generate_dashboards(args: argparse.Namespace) -> int:
    """Run dashboards/generate.py of the source checkout (the dashboards are not in the wheel:
    only their generated JSON is needed at run time)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "dashboards" / "generate.py"
    if not script.is_file():
        raise ConfigError("generate-dashboards needs a source checkout (dashboards/generate.py)")
    spec = importlib.util.spec_from_file_location("cj_health_dashboards_generate", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise ConfigError(f"generate-dashboards needs grafanalib: pip install "
                          f"'cj-health-exporter[dashboards]' ({exc})") from None
    argv = ["--check"] if args.check else []
    if args.out_dir:
        argv += ["--out-dir", args.out_dir]
    return int(module.main(argv))
