"""The one error an operator sees: a setting, a file or the database cannot be used as given.

Raised anywhere a value an operator supplied is wrong (a setting, the web config file, a DSN,
a database that is unreachable or lacks the views) and caught once, in `exporter.cli`, which
prints its message as one line on stderr and exits 2. The message never holds a password.
"""

from __future__ import annotations

EXIT_CODE = 2


class OperatorError(ValueError):
    """Something the operator gave cannot be used; the message is one line meant for them."""
