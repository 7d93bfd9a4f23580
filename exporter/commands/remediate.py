"""`remediate`: one finalizer action on one batch by hand (a dry run without --yes), or the
pause switch. The work is exporter.finalizer.manual's; this module only maps the command."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from exporter import db
from exporter.config import Settings
from exporter.errors import OperatorError
from exporter.service import setup_logging


def run(settings: Settings, *, batch: int | None, action: str | None, yes: bool,
        pause: str | None, resume: bool) -> int:
    from exporter.finalizer import manual  # numpy, scipy, choix: only for this command

    setup_logging(settings.log_level)
    try:
        if pause is not None or resume:
            return manual.set_pause(settings.finalizer(), pause)
        if action is None or batch is None:
            raise OperatorError("--batch needs --action (backfill_anchors or refinalize)")
        return manual.remediate(settings.finalizer(), batch, action, yes)
    except DBAPIError as exc:
        raise OperatorError(f"remediate failed: {db.describe_error(exc)}") from None
