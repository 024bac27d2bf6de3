"""`hemo-torchrun`: torchrun that exits with a code the orchestrators can act on.

torchrun (torch.distributed.run) ends with exit code 1 whenever a worker fails, whatever the
worker returned, and also when its own agent fails or is stopped: a `hemo train` that met an MLflow
server answering 503 (exit 3, "retry me"), a worker killed by the kernel and a bug (70) all come
out as 1, which the orchestrators read as "the data failed validation, do not retry"
(hemo_pipeline/exit_codes.py). The DAG's docker runner and the Kubernetes training pods start
train/refine under torchrun, so without this a passing server hiccup failed the DAG run for good.

Same arguments and behaviour as torchrun (its `main` is `run(parse_args())` under `@record`); only
the exit code differs:

* a worker failed: the code of the failure that caused the others (:func:`root_cause_code`);
* the agent was stopped by a signal N (`docker stop`, a pod evicted): 128 + N, as a shell reports it;
* the agent itself failed (rendezvous, the store's port, the c10d handshake): 3, transient;
* bad launcher arguments: 2 (argparse), as before.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Iterable
from typing import Any

from hemo_pipeline.exit_codes import EXIT_INTERNAL, EXIT_TRANSIENT, EXIT_USER, EXIT_VALIDATION

NOT_RETRIED = (EXIT_VALIDATION, EXIT_USER, EXIT_INTERNAL)


def worker_exit_code(exitcode: int) -> int:
    """A worker's exit code as a shell would report it: a kill by signal N (negative in
    torch.multiprocessing) is 128 + N; a nonsensical 0 for a failure is 1."""
    if exitcode < 0:
        return 128 + abs(exitcode)
    return exitcode if exitcode > 0 else 1


def root_cause_code(first: Any, failures: Iterable[Any]) -> int:
    """The exit code that names why the group failed: torchrun's root cause (``first``, its
    earliest failure), unless that is a code a retry cannot fix while another worker's is one a
    retry can. When one rank dies (SIGKILL, out of memory) the others fail next in a collective
    (gloo/NCCL errors: 70 from `hemo`) or get the agent's SIGTERM as it stops the group, and
    torchrun orders failures by whole-second timestamps, so its "first" can be a survivor's 70."""
    code = worker_exit_code(first.exitcode)
    if code not in NOT_RETRIED:
        return code
    ordered = sorted(failures, key=lambda f: (f.timestamp, f.local_rank))
    return next((c for c in (worker_exit_code(f.exitcode) for f in ordered) if c not in NOT_RETRIED), code)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record(run)(args)  # as torchrun: faulthandler, and the root cause's error file where asked
    except ChildFailedError as exc:
        print(exc.format_msg(), file=sys.stderr)
        _, first = exc.get_first_failure()
        code = root_cause_code(first, exc.failures.values())
        print(f"hemo-torchrun: a worker exited {code}{_signal_name(code)}; exiting with that code", file=sys.stderr)
        return code
    except SignalException as exc:
        print(f"hemo-torchrun: stopped by {exc.sigval.name}; exiting {128 + int(exc.sigval)}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except Exception:  # noqa: BLE001 - the agent's own failure: rendezvous, store, handshake
        traceback.print_exc()
        print(f"hemo-torchrun: the launcher failed before or around its workers; exiting {EXIT_TRANSIENT} "
              "(a retry starts a fresh agent)", file=sys.stderr)
        return EXIT_TRANSIENT
    return 0


def _signal_name(code: int) -> str:
    try:
        return f" ({signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
