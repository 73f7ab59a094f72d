"""How the command line reports a user's mistake: one line on standard error, exit code 2."""

from __future__ import annotations

__all__ = ["USER_ERRORS", "one_line_error"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)
"""Errors the CLI reports as one line (exit code 2): bad options, data, files, packages."""


def one_line_error(error: BaseException) -> str:
    """``error`` as one line: its message with whitespace runs (newlines) collapsed."""
    message = " ".join(str(error).split())
    return message or type(error).__name__
