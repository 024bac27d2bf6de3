"""``hemo``: one command line for every pipeline step.

Subcommands are registered by module path and their modules keep heavy imports (torch, MLflow,
GX) inside ``run`` so that ``hemo --help`` stays fast. A :class:`UserError` or
:class:`TransientError` becomes one ``error:`` line on stderr and its exit code (1 validation, 2
user error, 3 transient; see :mod:`components.errors`); anything else is a bug and keeps its
traceback. Every `hemo` process refuses MLflow's pickle deserialisation: models are data.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from components.errors import TransientError, UserError

STEPS: dict[str, str] = {
    "synth": "components.synth",
    "start-run": "components.start_run",
    "validate": "components.validate",
    "split": "components.split",
    "train": "components.train",
    "refine": "components.refine",
    "evaluate": "components.evaluate",
    "gate": "components.gate",
    "score": "components.score",
    "promote": "components.promote",
    "rollback": "components.rollback",
    "summary": "components.summary",
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


def main(argv: Sequence[str] | None = None) -> int:
    # Models are data, never code: MLflow 3 unpickles models by default; no hemo process does.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (UserError, TransientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
