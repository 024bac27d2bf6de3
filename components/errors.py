"""The one exception type for failures a user can cause (bad data, missing file, bad argument).

The CLI turns it into a single readable ``error:`` message and a non-zero exit, without a
traceback: the message itself must say which file/row is wrong and what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by the user's input, reported as one clear message (exit code 2)."""

    exit_code = 2


class ValidationFailed(UserError):
    """The data did not pass validation; the per-check lines were already printed (exit 1)."""

    exit_code = 1
