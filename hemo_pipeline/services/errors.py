"""The exception types for failures the CLI reports in one line, each with its exit code (the
table is :mod:`hemo_pipeline.exit_codes`). The message must say which file/row/URL is wrong and
what to do about it, and never hold a secret.
"""

from __future__ import annotations

from hemo_pipeline.exit_codes import EXIT_TRANSIENT, EXIT_USER, EXIT_VALIDATION


class UserError(Exception):
    """A failure caused by the user's input, reported as one clear message (exit code 2)."""

    exit_code = EXIT_USER


class ValidationFailed(UserError):
    """The data did not pass validation; the per-check lines were already printed (exit 1)."""

    exit_code = EXIT_VALIDATION


class TransientError(Exception):
    """A failure a retry may fix (exit code 3): a server that does not answer, a race, I/O."""

    exit_code = EXIT_TRANSIENT
