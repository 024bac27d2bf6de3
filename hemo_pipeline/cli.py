"""``hemo``: one command line for every pipeline step.

Steps are registered by module path; only the step that was asked for is imported. A
:class:`UserError` or :class:`TransientError` becomes one ``error:`` line on stderr and its exit
code (1 validation, 2 user error, 3 transient; the table is :mod:`hemo_pipeline.exit_codes`);
anything else is a bug: its traceback and exit 70. Every `hemo` process refuses MLflow's pickle deserialisation and forces
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

from hemo_pipeline.exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED
from hemo_pipeline.services.credentials import load_secrets_file
from hemo_pipeline.services.errors import TransientError, UserError

STEPS: dict[str, tuple[str, str]] = {
    "synth": ("hemo_pipeline.steps.synth",
              "Generate a synthetic head-CT data set in the DLCV layout (train.csv, train/, test/)."),
    "import-dicom": ("hemo_pipeline.steps.import_dicom",
                     "Import head-CT DICOM (a folder, RSNA's files, or a PACS over DICOMweb) into the DLCV layout."),
    "start-run": ("hemo_pipeline.steps.start_run",
                  "Start a pipeline run: create the parent MLflow run that every step's run nests under."),
    "sync-data": ("hemo_pipeline.steps.sync_data",
                  "Pull the versioned data (`dvc pull data.dvc`) before a pipeline run validates it."),
    "validate": ("hemo_pipeline.steps.validate",
                 "Validate labels and slice sequences with Great Expectations before anything trains."),
    "split": ("hemo_pipeline.steps.split",
              "Show which role every labelled patient has: train, val (model selection) or gate (held out)."),
    "train": ("hemo_pipeline.steps.train",
              "Stage 1: train ResNet34 on single slices (ASL, Adam, StepLR) of the `train` role."),
    "refine": ("hemo_pipeline.steps.refine",
               "Stage 2: refine the stage-1 model with 5-slice context (loss on the weighted logit sum)."),
    "evaluate": ("hemo_pipeline.steps.evaluate",
                 "Evaluate the refined model on the held-out gate patients and register it as the challenger."),
    "gate": ("hemo_pipeline.steps.gate",
             "Gate: promote the challenger only if it is shown better, measured fairly and with its uncertainty."),
    "score": ("hemo_pipeline.steps.score",
              "Batch scoring: predict every slice of every patient in a folder with the champion model."),
    "report": ("hemo_pipeline.steps.report",
               "Send the scored exams back where radiologists read: DICOM SR, evidence overlays and FHIR, pushed to the PACS."),
    "plan-scoring": ("hemo_pipeline.steps.plan_scoring",
                     "Plan a sharded `hemo score`: the shards of the scoring folder and the one model version they all use."),
    "merge-scores": ("hemo_pipeline.steps.merge_scores",
                     "Join the shards of a sharded `hemo score` into the files an unsharded run writes."),
    "ablate": ("hemo_pipeline.steps.ablate",
               "Reproduce the method's comparisons on your data: loss, head, context (filter, learned), single."),
    "promote": ("hemo_pipeline.steps.promote",
                "Promote a registered version to @champion by hand, with a reason (an audited override)."),
    "rollback": ("hemo_pipeline.steps.rollback",
                 "Roll @champion back to @previous (the champion it replaced), with a reason."),
    "summary": ("hemo_pipeline.steps.summary",
                "Print what the last pipeline run produced: micro-F2 single vs context, the gate decision,"),
    "end-run": ("hemo_pipeline.steps.end_run",
                "End the pipeline's parent MLflow run: the last step of every pipeline calls this."),
}
"""Every `hemo <step>`: its module and the first line of that module's docstring (the help line;
tests/test_cli.py keeps the two equal). Only the module of the step that was asked for is imported,
so a step may import torch, MLflow or GX at its top and `hemo --help` stays fast."""


def build_parser(step: str | None = None) -> argparse.ArgumentParser:
    """The `hemo` parser; the arguments of ``step`` only (its module imported), the others listed."""
    parser = argparse.ArgumentParser(
        prog="hemo",
        description="hemo-pipeline: train, gate, promote and serve an intracranial hemorrhage classifier.",
    )
    subparsers = parser.add_subparsers(dest="step", metavar="<step>", required=True)
    for name, (module_path, summary) in STEPS.items():
        sub = subparsers.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == step:
            module = importlib.import_module(module_path)
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(_module=module)
    return parser


def requested_step(argv: Sequence[str]) -> str | None:
    """The step an argument list asks for (its first argument), or None (`hemo --help`)."""
    return argv[0] if argv and argv[0] in STEPS else None


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
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(requested_step(arguments)).parse_args(arguments)
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
    from hemo_model.data.layout import DataError

    if isinstance(exc, DataError):
        return _fail(str(exc), UserError.exit_code)
    from hemo_pipeline.services import tracking

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
