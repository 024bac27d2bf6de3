"""`hemo-torchrun`: torchrun that exits with the failed worker's own exit code.

torchrun (torch.distributed.run) ends with exit code 1 whenever a worker fails, whatever the
worker returned: a `hemo train` that met an MLflow server answering 503 (exit 3, "retry me") or
a bug (70) both come out as 1, which the orchestrators read as "the data failed validation, do
not retry" (hemo_pipeline/exit_codes.py). The DAG's docker runner and the Kubernetes training
pods start train/refine under torchrun, so without this a passing server hiccup failed the DAG
run for good. Same arguments as torchrun; on a worker failure the exit code is the first failed
worker's (torchrun's root cause), 128 + N where a signal N killed it (as a shell reports it), and
torchrun's own error report is still printed.
"""

from __future__ import annotations

import signal
import sys


def worker_exit_code(exitcode: int) -> int:
    """A worker's exit code as a shell would report it: a kill by signal N (negative in
    torch.multiprocessing) is 128 + N; a nonsensical 0 for a failure is 1."""
    if exitcode < 0:
        return 128 + abs(exitcode)
    return exitcode if exitcode > 0 else 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        print(exc.format_msg(), file=sys.stderr)
        _, failure = exc.get_first_failure()
        code = worker_exit_code(failure.exitcode)
        print(f"hemo-torchrun: worker exited {code}{_signal_name(code)}; exiting with its code", file=sys.stderr)
        return code
    return 0


def _signal_name(code: int) -> str:
    try:
        return f" ({signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
