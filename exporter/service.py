"""Running the exporter: the database, the poller, the finalizer, HTTP and signals.

`serve` and `demo` both end up in `run()`: it wires a Poller (exporter.poll.scheduler), the
finalizer when remediation is authorized (exporter.finalizer, imported only then: the core never
needs numpy, scipy or choix), and the metrics server (exporter.web), then waits for SIGTERM or
SIGINT and stops everything within SHUTDOWN_SECONDS.

`serve` starts whatever the database's state, as postgres_exporter does: what the operator gave
must be usable (settings, DSN syntax and file, web config, the port), but a database that is
down, lacks the views or the grants is what `cj_health_up 0` and
`cj_health_poll_errors_total{reason}` report, with the reason in the log and on /healthz, and
the poller retries (with backoff, exporter.poll.scheduler) until it works. A database outage
during a rollout is then "poll failing", not a crash loop paging "exporter down".
`fail_fast` (`--fail-fast`) restores the old behaviour: exit 2 at start unless the first
connection and the views work.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import db
from exporter.config import (
    Settings,
    format_duration,
    parse_listen_address,
    redact,
    resolve_dsn,
)
from exporter.errors import OperatorError
from exporter.poll.scheduler import Poller, PollScheduler
from exporter.web.reload import WebSecurity
from exporter.web.server import MetricsServer

if TYPE_CHECKING:
    from exporter.finalizer.service import Remediator

log = logging.getLogger("exporter")
# From SIGTERM to exit, at most (plus 1 s to let threads end): a restart must not wait for a
# slow query, and Kubernetes kills the pod anyway after its grace period.
SHUTDOWN_SECONDS = 4.0


def open_engine(settings: Settings) -> Engine:
    """Engine for the read DSN, without connecting: OperatorError only for a DSN that cannot
    be used at all (none given, unreadable file, not a postgresql:// URL)."""
    url = resolve_dsn(settings.dsn, settings.dsn_file)
    return db.make_engine(url, settings.connect_timeout_seconds)


def connect(settings: Settings, check_view: bool = True) -> Engine:
    """Engine for the read DSN, connected once; OperatorError (exit 2) when it cannot be used:
    unreachable, or (check_view) the views missing or not granted to the role."""
    engine = open_engine(settings)
    url = engine.url
    try:
        db.check_connection(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise OperatorError(f"cannot connect to {redact(url)}: "
                            f"{db.describe_error(exc)}") from None
    if check_view:
        try:
            check_views(engine)
        except DBAPIError as exc:
            engine.dispose()
            raise OperatorError(f"cannot read the views in {redact(url)}: "
                                f"{db.explain(exc)}") from None
    return engine


def check_views(engine: Engine) -> None:
    """What a poll needs first: both views readable (DBAPIError otherwise)."""
    with engine.connect() as conn:
        for view in db.VIEWS:
            conn.execute(text(f"SELECT 1 FROM {view} LIMIT 0"))


def serve(settings: Settings) -> int:
    """The `serve` command: validate, run until a signal, then exit promptly."""
    host, port = parse_listen_address(settings.listen_address)
    # Before anything runs: a broken web config is an operator error like a bad setting.
    security = WebSecurity(settings.web_config_file) if settings.web_config_file else None
    engine = connect(settings) if settings.fail_fast else open_engine(settings)
    code = run(settings, engine, host, port, security=security)
    _exit_lingering(code)
    return code


def _exit_lingering(code: int) -> None:
    """A job that ignored the cancel (say, a connect to a black-holed host) would make the
    interpreter wait for its thread at exit. Every database change is one transaction, which
    Postgres rolls back when the connection drops, so leaving now is safe."""
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


def _start_remediator(settings: Settings) -> Remediator | None:
    if not settings.remediation.enabled:
        return None
    from exporter.finalizer import service  # only now: the core never needs it

    remediator, _ = service.start(settings.finalizer())  # None (refusal logged): unauthorized
    return remediator


def _poller(settings: Settings, engine: Engine, remediator: Remediator | None) -> Poller:
    if remediator:
        return Poller(settings, engine, extra_metrics=remediator.metrics.collect,
                      remediation_enabled=remediator.acting)
    # the core exports cj_health_remediations_total at 0 (idle_remediation_families)
    return Poller(settings, engine)


def _server(settings: Settings, host: str, port: int, poller: Poller,
            security: WebSecurity | None) -> MetricsServer:
    try:
        return MetricsServer(
            host, port, poller.store,
            authorize=security.authorize if security else None,
            tls=security if security and security.tls_enabled else None,
            headers=security.headers if security else None,
            telemetry_path=settings.telemetry_path)
    except OSError as exc:
        raise OperatorError(f"cannot listen on {settings.listen_address}: "
                            f"{exc.strerror}") from None


def run(settings: Settings, engine: Engine, host: str, port: int,
        security: WebSecurity | None = None, banner: str | None = None) -> int:
    """Poll + HTTP until SIGTERM or SIGINT; returns once everything is stopped."""
    remediator = _start_remediator(settings)
    poller = _poller(settings, engine, remediator)
    try:
        server = _server(settings, host, port, poller, security)
    except OperatorError:
        if remediator:
            remediator.close()
        raise
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
    _announce(settings, host, server.port, security, banner)
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


def _announce(settings: Settings, host: str, port: int, security: WebSecurity | None,
              banner: str | None) -> None:
    scheme = "https" if security and security.tls_enabled else "http"
    url = f"{scheme}://{_display_host(host)}:{port}{settings.telemetry_path}"
    if security:
        log.info("web config %s: %s", settings.web_config_file, security.describe())
        if security.auth_enabled and not security.tls_enabled:
            log.warning("basic auth without TLS: passwords cross the network in clear text")
    log.info("serving %s (poll every %s)", url, format_duration(settings.poll_interval_seconds))
    if banner:
        print(banner.format(url=url), flush=True)


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host
