"""Running the exporter: logging, the database, the poller, the finalizer, HTTP and signals.

`serve` and `demo` both end up in `run()`: it wires a Poller (exporter.poll.scheduler), the
finalizer when remediation is authorized (exporter.finalizer, imported only then: the core never
needs numpy, scipy or choix), and the metrics server (exporter.web), then waits for SIGTERM or
SIGINT and stops everything within SHUTDOWN_SECONDS.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from exporter import PROG, db
from exporter.config import Settings, parse_listen_address, redact, resolve_dsn
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


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def connect(settings: Settings, check_view: bool = True) -> Engine:
    """Engine for the read DSN; OperatorError (exit 2) when it cannot be used at all."""
    url = resolve_dsn(settings.dsn, settings.dsn_file)
    engine = db.make_engine(url, settings.connect_timeout_seconds)
    try:
        db.check_connection(engine)
    except DBAPIError as exc:
        raise OperatorError(f"cannot connect to {redact(url)}: "
                            f"{db.describe_error(exc)}") from None
    if check_view:
        _check_view(engine, url)
    return engine


def _check_view(engine: Engine, url: URL) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM cj_batch_health LIMIT 0"))
            conn.execute(text("SELECT 1 FROM cj_outbox_health LIMIT 0"))
    except DBAPIError as exc:
        raise OperatorError(f"the views are missing or broken in {redact(url)} "
                            f"({db.describe_error(exc)}): run `{PROG} install-view`") from None


def serve(settings: Settings) -> int:
    """The `serve` command: validate, connect, run until a signal, then exit promptly."""
    setup_logging(settings.log_level)
    host, port = parse_listen_address(settings.listen_address)
    # Before connecting: a broken web config is an operator error like a bad setting.
    security = WebSecurity(settings.web_config_file) if settings.web_config_file else None
    engine = connect(settings)
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
        return Poller(settings, engine, extra_metrics=remediator.collect,
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
            headers=security.headers if security else None)
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
    url = f"{scheme}://{_display_host(host)}:{port}/metrics"
    if security:
        log.info("web config %s: %s", settings.web_config_file, security.describe())
        if security.auth_enabled and not security.tls_enabled:
            log.warning("basic auth without TLS: passwords cross the network in clear text")
    log.info("serving %s (poll every %ss)", url, settings.poll_interval_seconds)
    if banner:
        print(banner.format(url=url), flush=True)


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host
