"""What a user error is: input a person can fix, told in one line.

``python -m stat_pl`` prints a :class:`UserError` as ``stat_pl <subcommand>: error: <message>`` and exits
with status 2, without a traceback (``STAT_PL_TRACEBACK=1`` shows it). Every other exception is a bug in
stat-pl and keeps its traceback. Code that checks input raises one of these, with a message that names the
thing (data file and line, config key, missing path) and what to do.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that is wrong: a data row, a config value, a file or folder the config names.

    A ``ValueError`` because most of it is a bad value, and code that catches ``ValueError`` keeps working.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the config names does not exist."""
