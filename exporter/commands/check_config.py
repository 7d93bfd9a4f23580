"""`check-config [--connect]`: validate everything `serve` would use, then exit 0 or 2.

Settings (file, env, flags) are validated while loading; this adds what `serve` only finds out
later or never: the web config with its certificates, the DSN files and URLs, the health
check's credential files. With --connect it also connects, runs one real poll under the
polling role (the views, the grants of the watched-set filter) and, when remediation is
enabled, connects with the write DSN and looks for the audit table. Every check prints one
`ok:` line; the first failure is the usual one line on stderr and exit 2.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from exporter import config, db
from exporter.commands.healthcheck import read_credentials
from exporter.config import Settings, redact
from exporter.errors import OperatorError
from exporter.service import connect

Out = Callable[[str], None]


def run(settings: Settings, connect_db: bool, out: Out = print) -> int:
    out(f"ok: settings (poll every {config.format_duration(settings.poll_interval_seconds)}, "
        f"listen {settings.listen_address}{settings.telemetry_path})")
    check_web(settings, out)
    url = config.resolve_dsn(settings.dsn, settings.dsn_file)
    out(f"ok: dsn {redact(url)}")
    r = settings.remediation
    if r.enabled:
        write = config.resolve_dsn(r.write_dsn, r.write_dsn_file, "remediation.write_dsn")
        out(f"ok: remediation.write_dsn {redact(write)} (actions: "
            f"{', '.join(r.actions) or 'none'}; {'dry run' if r.dry_run else 'acting'})")
    check_healthcheck(settings, out)
    if connect_db:
        check_database(settings, out)
    out("configuration OK")
    return 0


def check_web(settings: Settings, out: Out) -> None:
    if not settings.web_config_file:
        out("ok: no web config (plain HTTP, no authentication)")
        return
    from exporter.web.reload import WebSecurity

    security = WebSecurity(settings.web_config_file)  # loads certificates: OperatorError
    out(f"ok: web config {settings.web_config_file}: {security.describe()}")


def check_healthcheck(settings: Settings, out: Out) -> None:
    check = settings.healthcheck
    if check.credentials_file:
        read_credentials(check.credentials_file)
        out(f"ok: healthcheck.credentials_file {check.credentials_file}")
    if check.cert_file and check.key_file:
        try:
            ssl.create_default_context().load_cert_chain(check.cert_file, check.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise OperatorError(f"cannot load healthcheck.cert_file/key_file: {exc}") from None
        out(f"ok: healthcheck client certificate {check.cert_file}")


def check_database(settings: Settings, out: Out) -> None:
    from exporter.poll import query

    engine = connect(settings)  # connects and reads both views: OperatorError with the cause
    try:
        snap = query.poll(engine, settings)
    except DBAPIError as exc:
        raise OperatorError(f"a poll fails under this role: {db.explain(exc)}") from None
    finally:
        engine.dispose()
    out(f"ok: one poll: {snap.watched} batches watched, {len(snap.batches)} exported, "
        f"{snap.duration_seconds:.2f}s")
    r = settings.remediation
    if not r.enabled:
        return
    url = config.resolve_dsn(r.write_dsn, r.write_dsn_file, "remediation.write_dsn")
    write = db.make_engine(url, settings.connect_timeout_seconds)
    try:
        with write.connect() as conn:
            audit = conn.execute(text(
                "SELECT to_regclass('cj_health_remediations') IS NOT NULL")).scalar_one()
    except DBAPIError as exc:
        raise OperatorError(f"cannot connect with the write DSN {redact(url)}: "
                            f"{db.describe_error(exc)}") from None
    finally:
        write.dispose()
    if not audit:
        raise OperatorError("the audit table cj_health_remediations is missing: run "
                            "`cj-health-exporter install-view --remediation`")
    out("ok: write DSN connects; audit table present")
