"""`remediate`: one finalizer action on one batch by hand (a dry run without --yes), or the
pause switch. The work is exporter.finalizer.manual's; this module maps the command: it finds
the batch first (a cj_batch_id, or a bos_batch_id with one CJ run, as `inspect` takes them), so
an unknown batch exits 1 like `inspect` instead of being "skipped", and it says which grant
or DSN is missing when the database refuses."""

from __future__ import annotations

import sys

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import PROG, config, db
from exporter.config import Settings
from exporter.errors import OperatorError

_RUNS = text(
    "SELECT cj_batch_id FROM cj_batch_health WHERE bos_batch_id = :key"
    " OR (:key ~ '^[0-9]{1,9}$' AND cj_batch_id = CAST(:num AS integer))"
    " ORDER BY cj_batch_id"
)
NOT_FOUND = 1


def run(settings: Settings, *, batch: str | None, action: str | None, yes: bool,
        pause: str | None, resume: bool) -> int:
    from exporter.finalizer import manual  # numpy, scipy, choix: only for this command

    try:
        if pause is not None or resume:
            return manual.set_pause(settings.finalizer(), pause)
        if action is None or batch is None:
            raise OperatorError("--batch needs --action (backfill_anchors or refinalize)")
        cj_batch_id = find_batch(settings, batch)
        if cj_batch_id is None:
            print(f"{PROG}: no CJ batch with cj_batch_id or bos_batch_id {batch!r}",
                  file=sys.stderr)
            return NOT_FOUND
        lines: list[str] = []

        def out(line: str) -> None:
            lines.append(line)
            print(line, flush=True)

        code = manual.remediate(settings.finalizer(), cj_batch_id, action, yes, out=out)
    except DBAPIError as exc:
        raise OperatorError(f"remediate failed: {db.explain(exc)}") from None
    except OperatorError as exc:
        if "remediation.enabled is false" in str(exc):
            raise OperatorError(f"{exc}: --yes acts only when the configuration authorizes it "
                                "(remediation.enabled: true, remediation.actions and a write DSN"
                                " in the --config file, or CJ_HEALTH_REMEDIATION_ENABLED=true,"
                                " CJ_HEALTH_REMEDIATION_ACTIONS=...)") from None
        raise
    if code and any("InsufficientPrivilege" in line for line in lines):
        print(_grant_hint(settings, yes), file=sys.stderr)
    return code


def _engine(settings: Settings) -> Engine:
    """The write DSN's role when given (it may read the view), else the read DSN's."""
    r = settings.remediation
    if r.write_dsn or r.write_dsn_file:
        url = config.resolve_dsn(r.write_dsn, r.write_dsn_file, "remediation.write_dsn")
    else:
        url = config.resolve_dsn(settings.dsn, settings.dsn_file)
    return db.make_engine(url, settings.connect_timeout_seconds,
                          application_name="cj-health-exporter-remediate")


def find_batch(settings: Settings, key: str) -> int | None:
    """The cj_batch_id `key` names; OperatorError when a bos_batch_id has several CJ runs."""
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            num = key if key.isdigit() and len(key) <= 9 else "0"
            runs = list(conn.execute(_RUNS, {"key": key, "num": num}).scalars())
    finally:
        engine.dispose()
    if len(runs) > 1:
        raise OperatorError(f"BOS batch {key} has {len(runs)} CJ runs "
                            f"({', '.join(map(str, runs))}): pass the cj_batch_id of one")
    return int(runs[0]) if runs else None


def _grant_hint(settings: Settings, yes: bool) -> str:
    r = settings.remediation
    if not yes and not (r.write_dsn or r.write_dsn_file):
        return (f"{PROG}: hint: without --write-dsn the dry run reads with the read DSN's role, "
                "which may not read what the action needs: give --write-dsn (cj_health_remediator)"
                " or run it as a login granted cj_health_operator (sql/roles.sql)")
    return (f"{PROG}: hint: the write DSN's role lacks a grant the action needs: re-run "
            "sql/roles.sql (`cj-health-exporter assets roles.sql` prints where it is) after "
            "`install-view --remediation`")
