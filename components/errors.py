"""The exception types for failures the CLI reports in one line, and their exit codes.

Exit codes mean something to orchestrators (the Airflow DAG retries only what a retry can fix):

* 1 ``ValidationFailed``: the data did not pass validation (per-check lines printed before).
* 2 ``UserError``: bad input a person must fix: a missing file, a wrong argument or setting.
* 3 ``TransientError``: not the user's input: the tracking server is unreachable, an I/O error,
  an alias moved under us. Retrying later may succeed.

The message itself must say which file/row/URL is wrong and what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by the user's input, reported as one clear message (exit code 2)."""

    exit_code = 2


class ValidationFailed(UserError):
    """The data did not pass validation; the per-check lines were already printed (exit 1)."""

    exit_code = 1


class TransientError(Exception):
    """A failure a retry may fix (exit code 3): a server that does not answer, a race, I/O."""

    exit_code = 3


EXIT_VALIDATION, EXIT_USER, EXIT_TRANSIENT = ValidationFailed.exit_code, UserError.exit_code, TransientError.exit_code
