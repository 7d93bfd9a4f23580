"""Running the exporter: logging, the database, the poller, the finalizer, HTTP and signals.

`serve` and `demo` both end up in `run()`: it wires a Poller (exporter.poll.scheduler), the
finalizer when remediation is authorized (exporter.finalizer, imported only then: the core never
needs numpy, scipy or choix), and the metrics server (exporter.web), then waits for SIGTERM or
SIGINT and stops everything within SHUTDOWN_SECONDS. SIGHUP re-reads the web config and the
read DSN file (docs/security.md, "Signals").
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event, text
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
    """A job that ignored the cancel (say, a connect to a black-holed host, or a finalizer
    action inside its transaction) keeps its thread busy after the jobs were stopped (SIGTERM
    inside a finalizer transaction once waited for the whole remediation cycle). Every
    database change is one transaction, which Postgres rolls back when the connection drops, so
    leaving now is safe; os._exit unwinds nothing, so no native code is interrupted mid-call."""
    end = time.monotonic() + 1.0
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    for thread in others:
        thread.join(max(end - time.monotonic(), 0))  # idle pool workers end within ms
    lingering = [t.name for t in others if t.is_alive()]
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
            auth=security.basic_auth if security else None,
            tls=security if security and security.tls_enabled else None,
            headers=security.headers if security else None,
            telemetry_path=settings.telemetry_path)
    except OSError as exc:
        raise OperatorError(f"cannot listen on {settings.listen_address}: "
                            f"{exc.strerror}") from None


class ReadDsn:
    """The read DSN of a running exporter, re-read from `dsn_file` on SIGHUP.

    New connections take their parameters from the DSN in use (a `do_connect` hook), so after a
    reload the pool is emptied and the next poll connects with the new DSN, say a rotated
    password; a poll running meanwhile finishes on its connection. A file that cannot be read
    or parsed keeps the DSN in use (logged). A DSN given directly (`--dsn`) cannot change.
    """

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.url = engine.url
        self._base = self._params(engine.url)  # what the engine's own URL contributes
        self._current = self._base
        event.listen(engine, "do_connect", self._on_connect)

    def _params(self, url: URL) -> dict[str, Any]:
        return dict(self.engine.dialect.create_connect_args(url)[1])

    def _on_connect(self, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key in self._base:
            cparams.pop(key, None)
        cparams.update(self._current)

    def reload(self) -> None:
        path = self.settings.dsn_file
        if not path:
            log.info("SIGHUP: the DSN was given directly, not in a file: nothing to re-read")
            return
        try:
            url = resolve_dsn(None, path)
        except OperatorError as exc:
            log.error("SIGHUP: keeping the DSN in use: %s", exc)
            return
        if url == self.url:
            log.info("SIGHUP: dsn_file %s unchanged", path)
            return
        self._current, self.url = self._params(url), url
        self.engine.dispose()  # idle pooled connections close; the next poll reconnects
        log.info("SIGHUP: read DSN reloaded from %s (%s)", path, redact(url))


class Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; both are handled on the main thread."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._received: deque[int] = deque()
        for sig in self.HANDLED:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received.append(signum)  # only this here: the real work waits for the main loop
        self._wake.set()

    def wait(self, on_hangup: Callable[[], None]) -> None:
        """Until SIGTERM or SIGINT; each SIGHUP meanwhile calls `on_hangup()`."""
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._received:
                signum = self._received.popleft()
                if signum != signal.SIGHUP:
                    log.info("%s received", signal.Signals(signum).name)
                    return
                on_hangup()


def run(settings: Settings, engine: Engine, host: str, port: int,
        security: WebSecurity | None = None, banner: str | None = None) -> int:
    """Poll + HTTP until SIGTERM or SIGINT (SIGHUP reloads); returns once everything stopped."""
    signals = Signals()  # first: a signal during the start-up is handled, not fatal
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
    dsn = ReadDsn(settings, engine)
    scheduler.start()
    server.start()
    _announce(settings, host, server.port, security, banner)
    signals.wait(lambda: _hangup(security, dsn))
    log.info("shutting down")
    # Jobs first (no new poll starts, a running one is cancelled server-side), then HTTP: it
    # closes every connection and waits for a bcrypt check in progress (never killed inside
    # bcrypt's native code, which aborted the process).
    if not scheduler.stop(timeout=SHUTDOWN_SECONDS - 1.5):
        log.warning("the running poll did not stop in time")
    server.stop()
    if remediator:
        remediator.close()  # releases the leader lock: another replica takes over
    engine.dispose()
    return 0


def _hangup(security: WebSecurity | None, dsn: ReadDsn) -> None:
    log.info("SIGHUP: re-reading the web config and the DSN file")
    if security is not None and not security.reload():
        log.info("SIGHUP: web config %s unchanged or not usable", security.path)
    dsn.reload()


def _announce(settings: Settings, host: str, port: int, security: WebSecurity | None,
              banner: str | None) -> None:
    scheme = "https" if security and security.tls_enabled else "http"
    url = f"{scheme}://{_display_host(host)}:{port}{settings.telemetry_path}"
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
