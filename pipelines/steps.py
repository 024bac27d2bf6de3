"""The `hemo` steps of the Kubeflow pipeline: one signature and one command line per step.

Each step is a plain function whose signature is its component's interface (inputs, the result
fields it hands on as outputs, the optional overrides) and whose body is the kfp.local twin's:
it runs :func:`step_command` in a subprocess. :mod:`pipelines.kubeflow` builds the container
component of the same step from the same signature and the same :func:`step_command`, so the
training image on a cluster and a subprocess here execute one argv (see that module's docstring).

Only what a kfp *runtime* offers is imported here (the twin's body imports this module inside a
kfp executor, where ``kfp.compiler`` cannot be imported); the placeholder classes are only needed
while compiling and are imported then.
"""

# No `from __future__ import annotations`: kfp reads the step signatures' annotations as objects.

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from kfp.dsl import OutputPath, PipelineTaskFinalStatus

from hemo_pipeline.orchestration.runners import (
    OVERRIDE_KEYS,
    RESULTS_DIR,
    StepSettings,
    hemo_args,
    pod_argv,
    result_name,
    safe_run_key,
    shard_args,
    step_env,
)
from hemo_pipeline.services.results import RESULT_ENV, field_env

# The body runs the local twin; the container component is built from the same signature.
# `values = dict(locals())` must stay the first statement: it captures exactly the parameters.


def start_run(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, run_id: OutputPath(str),
              epochs: Optional[int] = None, image_size: Optional[int] = None,
              min_improvement: Optional[float] = None):
    """`hemo start-run`: the parent MLflow run; its id is every later step's parent."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("start-run", values)


def validate(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str,
             epochs: Optional[int] = None, image_size: Optional[int] = None,
             min_improvement: Optional[float] = None):
    """`hemo validate`: Great Expectations checks; bad data fails here (exit 1) before any training."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("validate", values)


def train(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str,
          epochs: Optional[int] = None, image_size: Optional[int] = None, min_improvement: Optional[float] = None):
    """`hemo train`: stage 1 on single slices (GPU), resuming from its checkpoint on a retry."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("train", values)


def refine(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str,
           epochs: Optional[int] = None, image_size: Optional[int] = None, min_improvement: Optional[float] = None):
    """`hemo refine`: stage 2 with 5-slice context (GPU)."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("refine", values)


def evaluate(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str,
             version: OutputPath(str), epochs: Optional[int] = None, image_size: Optional[int] = None,
             min_improvement: Optional[float] = None):
    """`hemo evaluate`: metrics and plots; registers the model as @challenger (output: its version)."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("evaluate", values)


def gate(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str,
         promoted: OutputPath(bool), reason: OutputPath(str), champion_version_after: OutputPath(str),
         epochs: Optional[int] = None, image_size: Optional[int] = None, min_improvement: Optional[float] = None):
    """`hemo gate`: @challenger against @champion as served; moves @champion or not (outputs: the
    decision and the champion version it left, which scoring is pinned to)."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("gate", values)


def plan_scoring(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, shard_count: int,
                 champion_version: str, shards: OutputPath(list), model: OutputPath(str)):
    """`hemo plan-scoring`: one work order per shard of data/test (index, count and the model URI
    every shard scores with: the gate's champion version), the parallel-for's items."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("plan-scoring", values)


def score(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str, shard: int,
          shard_count: int, model: str, model_version: OutputPath(str), epochs: Optional[int] = None,
          image_size: Optional[int] = None, min_improvement: Optional[float] = None):
    """`hemo score --shard I/N --model <version URI>`: one shard's predictions (GPU; output: the
    version that scored)."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("score", values)


def merge_scores(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, shard_count: int):
    """`hemo merge-scores --shards N`: the shards joined into the files one unsharded run writes."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("merge-scores", values)


def report(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str, parent_run_id: str, mapping: str,
           out: str, dicom: Optional[str] = None, dicomweb: Optional[str] = None, push: Optional[str] = None):
    """`hemo report` for the merged scores: the DICOM SR and FHIR report of every scored series (no
    Secondary Captures: the pipeline's score draws no overlays) into ``<out>/<run folder>``, sources
    from ``dicom`` (a folder) or ``dicomweb`` (a PACS), stored on ``push`` (STOW-RS) if given. The
    pipeline runs it only where report_mapping is set."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("report", values)


def end_run(project_dir: str, runs_dir: str, run_key: str, mlflow_uri: str,
            final_status: PipelineTaskFinalStatus):
    """`hemo end-run`: ends the parent run FINISHED, or FAILED when a step failed (exit handler).

    An exit task may not consume other tasks' outputs, so it gets no parent run id: it works in
    the same run folder, where start-run recorded the parent (outputs/pipeline_run.json)."""
    values = dict(locals())
    from pipelines.steps import run_here
    run_here("end-run", values)


STEP_FUNCTIONS: dict[str, Callable[..., None]] = {
    "start-run": start_run, "validate": validate, "train": train, "refine": refine,
    "evaluate": evaluate, "gate": gate, "plan-scoring": plan_scoring, "score": score,
    "merge-scores": merge_scores, "report": report, "end-run": end_run,
}
OUTPUTS: dict[str, tuple[str, ...]] = {
    step: tuple(name for name, p in inspect.signature(func).parameters.items()
                if isinstance(p.annotation, OutputPath))
    for step, func in STEP_FUNCTIONS.items()
}
"""Each step's result fields that become component outputs (the OutputPath parameters)."""
STEP_ARGS: dict[str, Callable[[Mapping[str, Any]], list[Any]]] = {
    "plan-scoring": lambda v: ["--shards", v["shard_count"], "--model", v["champion_version"]],
    "score": lambda v: shard_args(v["shard"], v["shard_count"], v["model"]),
    "merge-scores": lambda v: ["--shards", v["shard_count"]],
}
"""The arguments a step takes from its component inputs, after :func:`hemo_args`'s own."""


# --- one command line for both ways of running a step -------------------------------------------


def step_command(step: str, values: Mapping[str, Any]) -> list[Any]:
    """The container command of ``step``: in the run folder, with the step's environment, run
    ``hemo <step>`` with :func:`hemo_args`; each output field is written to its output file.

    ``values`` holds either Kubeflow placeholders (compiling) or the resolved values (the local
    twin). An override that is not given is left out: at compile time each ``--set`` pair becomes
    an ``IfPresentPlaceholder`` on its optional input, at run time :func:`hemo_args` skips None.
    """
    def text(value: Any) -> Any:
        return None if value is None else str(value)

    overrides = {key: values.get(key) for key in OVERRIDE_KEYS if key in values}
    compiling = any(_is_placeholder(v) for v in values.values())
    if compiling:
        overrides = {key: str(value) for key, value in overrides.items()}
    # The run folder's name: runners.safe_run_key, the one mapping every runner uses. Compiling, the
    # key is Kubeflow's run-id placeholder, resolved on the cluster to a lower-case UUID, which that
    # mapping keeps as it is (tests/security/test_run_folders.py), so both paths name one folder.
    run_key = text(values["run_key"]) if compiling else safe_run_key(text(values["run_key"]))
    settings = StepSettings(
        project_dir=Path(text(values["project_dir"])),
        run_dir=Path(text(values["runs_dir"])) / run_key,
        mlflow_uri=text(values["mlflow_uri"]),
        dag_run_id=text(values["run_key"]),
        parent_run_id=text(values.get("parent_run_id")),
        overrides=overrides,
    )
    extra = [text(arg) for arg in STEP_ARGS[step](values)] if step in STEP_ARGS else []
    env = {**step_env(settings), RESULT_ENV: str(settings.run_dir / RESULTS_DIR / f"{result_name(step, extra)}.json"),
           **{field_env(name): text(values[name]) for name in OUTPUTS[step]}}
    argv: list[Any] = ["hemo", *hemo_args(step, settings.project_dir, settings.overrides), *extra]
    if step == "report":
        argv += _report_args(values, run_key, compiling)
    if step == "end-run":
        argv += ["--final-status", _final_status_text(values["final_status"])]
    if compiling:
        argv = _optional_overrides(argv, overrides)
    return pod_argv(str(settings.run_dir), env, argv)


def _report_args(values: Mapping[str, Any], run_key: str, compiling: bool) -> list[Any]:
    """`hemo report`'s site arguments: the objects into the run's own subfolder of ``out`` (as the
    DAG's report task writes them), and each optional source or target only where it was given (an
    IfPresentPlaceholder on its input when compiling)."""
    args: list[Any] = ["--mapping", str(values["mapping"]), "--out", f"{values['out']}/{run_key}"]
    for name in ("dicom", "dicomweb", "push"):
        if compiling:
            from kfp.dsl.placeholders import IfPresentPlaceholder

            args.append(IfPresentPlaceholder(input_name=name, then=[f"--{name}", str(values[name])]))
        elif values.get(name):  # kfp.local hands "" for an input not given (pipelines.kubeflow.run_local)
            args += [f"--{name}", str(values[name])]
    return args


def _is_placeholder(value: Any) -> bool:
    """A kfp placeholder (the container component is being built), not a resolved value."""
    return type(value).__module__ == "kfp.dsl.placeholders"


def _final_status_text(status: Any) -> str:
    """The final-status document `hemo end-run --final-status` reads: Kubeflow substitutes its JSON
    for the placeholder; locally the executor hands over an object, serialised to the same shape."""
    if isinstance(status, PipelineTaskFinalStatus):
        return json.dumps({"state": status.state, "pipelineTaskName": status.pipeline_task_name,
                           "error": {"code": status.error_code, "message": status.error_message}})
    if isinstance(status, Mapping):
        return json.dumps(dict(status))
    return str(status)


def _optional_overrides(argv: list[Any], placeholders: Mapping[str, Any]) -> list[Any]:
    """Wrap each ``--set section.key=<placeholder>`` pair in an IfPresentPlaceholder on its input."""
    from kfp.dsl.placeholders import IfPresentPlaceholder

    wrapped: list[Any] = []
    i = 0
    while i < len(argv):
        owner = next((name for name, p in placeholders.items()
                      if argv[i] == "--set" and i + 1 < len(argv) and p in str(argv[i + 1])), None)
        if owner is None:
            wrapped.append(argv[i])
            i += 1
            continue
        wrapped.append(IfPresentPlaceholder(input_name=owner, then=["--set", argv[i + 1]]))
        i += 2
    return wrapped


def run_here(step: str, values: Mapping[str, Any]) -> None:
    """The local twin's body: execute :func:`step_command` as a subprocess (``hemo`` from PATH)."""
    import subprocess

    argv = step_command(step, values)
    print("running:", " ".join(argv[argv.index("hemo"):]), f"(cwd {argv[4]})", flush=True)  # env may hold secrets
    code = subprocess.call(argv)
    if code != 0:
        raise SystemExit(f"hemo {step} exited with code {code}")
