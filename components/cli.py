"""``hemo``: one command line for every pipeline step.

Subcommands are registered by module path and their modules keep heavy imports (torch, MLflow,
GX) inside ``run`` so that ``hemo --help`` stays fast. A :class:`UserError` or
:class:`TransientError` becomes one ``error:`` line on stderr and its exit code (1 validation, 2
user error, 3 transient; the table is in :mod:`components.errors`); anything else is a bug: its
traceback and exit 70. Every `hemo` process refuses MLflow's pickle deserialisation and forces
``torch.load`` to ``weights_only``: models are data, and these are second walls behind a model
format that holds no pickle at all.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from components.credentials import load_secrets_file
from components.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, TransientError, UserError

STEPS: dict[str, str] = {
    "synth": "components.synth",
    "import-dicom": "components.import_dicom",
    "start-run": "components.start_run",
    "validate": "components.validate",
    "split": "components.split",
    "train": "components.train",
    "refine": "components.refine",
    "evaluate": "components.evaluate",
    "gate": "components.gate",
    "score": "components.score",
    "plan-scoring": "components.plan_scoring",
    "merge-scores": "components.merge_scores",
    "ablate": "components.ablate",
    "promote": "components.promote",
    "rollback": "components.rollback",
    "summary": "components.summary",
    "end-run": "components.end_run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hemo",
        description="hemo-pipeline: train, gate, promote and serve an intracranial hemorrhage classifier.",
    )
    subparsers = parser.add_subparsers(dest="step", metavar="<step>", required=True)
    for name, module_path in STEPS.items():
        module = importlib.import_module(module_path)
        doc = (module.__doc__ or "").strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=doc, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


MLFLOW_HTTP_DEFAULTS = {
    # Bounded waits on the tracking server: ~1 min of retries with back-off (0, 2, 4, ... 32 s) ride
    # out a restart; then the step fails with one line (exit 3) instead of blocking for minutes (the
    # MLflow default is ~4 min per call). Set any of these in the environment to change them.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Model downloads are small; their progress bars only bury the one line a failure prints.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


SAFE_LOADING = {
    # Models are data, never code: MLflow 3 unpickles models by default; no hemo process does.
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    # torch.load refuses pickled code even where a caller forgot weights_only=True.
    "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1",
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.update(SAFE_LOADING)
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # would contradict the line above
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_secrets_file()  # HEMO_SECRETS_FILE: credentials a container gets as a private file, not as env
        return int(args._module.run(args) or 0)
    except (UserError, TransientError) as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # data errors from the library, an unreachable server, I/O
        return _classified(exc)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


PERSISTENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                               errno.ENAMETOOLONG, errno.EROFS, errno.EEXIST, errno.ENOSPC, errno.EDQUOT,
                               errno.EFBIG, errno.EINVAL, errno.ENOTEMPTY, errno.EXDEV})
"""I/O errors that stay until a person acts (a missing or unreadable file, a full disk): exit 2, so
orchestrators do not retry them. Others (EIO, timeouts, a stale mount) are transient: exit 3."""


def _classified(exc: Exception) -> int:
    """Failures that are not bugs get one line and their exit code; anything else is a bug: its
    traceback and exit 70. Data errors of the library (a bad file named in the message) are user
    errors (2); an unreachable tracking server is transient (3, retried by the DAG); an I/O error
    is 2 when it lasts until someone fixes the file or disk, else 3."""
    from hemo_model.layout import DataError

    if isinstance(exc, DataError):
        return _fail(str(exc), UserError.exit_code)
    from components import tracking

    unreachable = tracking.unreachable(exc)
    if unreachable:
        return _fail(unreachable, TransientError.exit_code)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in PERSISTENT_ERRNOS:
            return _fail(f"{exc.strerror or exc}{where}: fix the file, its permissions or the disk, then retry",
                         UserError.exit_code)
        return _fail(f"I/O error{where}: {exc.strerror or exc}; check the disk/mount and retry",
                     TransientError.exit_code)
    traceback.print_exception(exc, file=sys.stderr)
    print(f"error: internal error in hemo ({type(exc).__name__}); this is a bug, please report it with the "
          "traceback above", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
