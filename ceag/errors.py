"""The error a user's own mistake raises, as opposed to a bug in ceag.

The ``ceag`` command prints a :class:`UsageError` as one line naming the flag, file or
variable at fault; any other unexpected exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """What was asked for cannot be done as asked: a bad flag or config value, a folder that
    holds another experiment, a path that is a file, a bad environment variable."""
