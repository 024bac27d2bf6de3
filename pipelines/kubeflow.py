"""hemo-retraining as a Kubeflow Pipelines v2 pipeline: the same `hemo` steps as dvc.yaml and the DAG.

    start-run -> [ validate -> train -> refine -> evaluate -> gate -> (promoted?)
                   plan-scoring -> parallel-for score --shard I/N -> merge-scores
                   -> (report_mapping set?) report ] -> end-run (exit handler)

Compile (the committed pipeline.yaml is this output; a test keeps it current)::

    make pipeline.yaml        # = .venv-kfp/bin/python -m pipelines.kubeflow compile --out pipeline.yaml

Run the same pipeline on this machine, without a cluster or Docker (``hemo`` must be on PATH)::

    .venv-kfp/bin/python -m pipelines.kubeflow run-local --project-dir . --runs-dir runs --mlflow-uri URI

**One definition of each step, two ways to execute it.** Each step is declared once, in
:mod:`pipelines.steps`, as a plain function whose signature is the component's interface (inputs,
outputs, optional overrides). From it come

* the *container component* compiled into pipeline.yaml: the training image runs
  :func:`step_command`, i.e. ``sh -c <fixed launcher> <run folder> NAME=value... hemo <step> ...``
  (:func:`hemo_pipeline.orchestration.runners.pod_argv` around :func:`hemo_pipeline.orchestration.runners.hemo_args`, the argument
  lists the Airflow runners use too);
* a *lightweight Python component* for ``kfp.local``, whose body runs that same
  :func:`step_command` with the values kfp.local resolved, in a subprocess.

Why two: kfp.local's SubprocessRunner refuses container components ("only supports running
Lightweight Python Components"), and its DockerRunner needs a Docker daemon. Running the
lightweight twin executes the identical argv (launcher, env, `hemo` arguments) through the same
:func:`build_pipeline`, so the graph, the conditions, the exit handler and the output passing
that run locally are the ones compiled for the cluster. What the local run cannot show is the
Kubernetes side (image, PVC, GPU scheduling); tests check that in the compiled IR.

**How values pass.** Files (checkpoints, reports) stay in one run folder on the shared PVC,
``<runs_dir>/<Kubeflow run id>``, exactly as the Airflow runners use ``runs/<dag run id>``; small
values are component outputs: a step publishes its result (:mod:`hemo_pipeline.services.results`) and the
launcher asks for single fields with ``HEMO_RESULT_FIELD_<KEY>=<output file>``. start-run's
``run_id`` becomes every step's HEMO_PARENT_RUN_ID, gate's ``promoted`` drives ``dsl.If``, its
``champion_version_after`` goes to plan-scoring, whose ``shards`` list (one work order per shard:
index, count and the one pinned model URI) is the items of a ``dsl.ParallelFor`` of score tasks,
each writing its own shard files into the run folder; merge-scores runs after all of them
(``.after`` on the loop's task) and writes the files one unsharded score writes, and
end-run, the exit task, receives Kubeflow's final status and ends the parent run FINISHED or
FAILED (an exit task may not take other tasks' outputs, so it finds the parent run in the run
folder, where start-run recorded it).

**Caching is off for every task.** Each step has effects Kubeflow cannot see (MLflow runs, the
model registry's aliases, files on the PVC, data that changes under the same path), so a cache
hit would silently skip real work: a stale validation, a champion not re-gated, old predictions.

This module imports kfp and lives in `.venv-kfp` only; the main package never imports it.
"""

# No `from __future__ import annotations`: kfp reads the step signatures' annotations as objects.

import argparse
import builtins
import inspect
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from kfp import compiler, dsl, kubernetes

from hemo_pipeline.orchestration.runners import DEFAULT_IMAGE, GPU_RESOURCE, GPU_STEPS, OVERRIDE_KEYS, pod_resources
from pipelines.steps import STEP_FUNCTIONS, step_command

PIPELINE_NAME = "hemo-retraining"
PVC_MOUNT = "/mnt/hemo"
"""Where the shared PVC is mounted in every step: project/ (data, params.yaml) and runs/ below it,
the layout the KubernetesPodOperator runner uses on the same claim."""
DEFAULT_PVC = "hemo-data"
DEFAULT_MLFLOW_URI = "http://mlflow.hemo.svc.cluster.local:5000"
LOCAL_BASE_IMAGE = "python:3.11"
"""Only named in the local twins' specs; kfp.local runs them in this Python, not in an image."""
MAX_PARALLEL_SHARDS = 8
"""At most this many scoring pods (one GPU each) at a time, whatever score_shards asks for."""
SHM_SIZE = "16Gi"  # the DataLoader's workers share batches through /dev/shm
STEP_SECRET = "hemo-step"
"""The Kubernetes Secret with the pipeline writer's MLflow login (keys MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD; ``kubectl create secret generic hemo-step --from-env-file=hemo-step.env``),
the same one the Airflow kubernetes runner uses. Every step gets them as environment from the
Secret (secretKeyRef): the compiled pipeline and the pod spec name the Secret, never a value."""
SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
REPORT_OPTIONAL = ("report_dicom", "report_dicomweb", "report_push")
"""The report step's optional pipeline inputs (IfPresent on a cluster)."""
REPORT_INPUTS = ("report_mapping", "report_out", *REPORT_OPTIONAL)
"""Every pipeline input of the report step; the first two default to "" (no report)."""
REPORT_SECRET_KEYS = ("HEMO_DICOMWEB_TOKEN", "HEMO_DICOMWEB_USERNAME", "HEMO_DICOMWEB_PASSWORD")
"""The PACS credentials `hemo report` reads (hemo_pipeline.services.dicomweb), each optional: a PACS
on a trusted network may take none."""
RETRIES = 2
"""On a cluster: a lost node or a restarting MLflow server is worth two retries, and train/refine
resume from their checkpoint (--resume auto). Kubeflow retries do not look at the exit code, so
validate, whose failure is bad data, gets none. The local run retries nothing: a failure there
is to be seen at once."""


# --- the two component sets ---------------------------------------------------------------------


def container_component(step: str) -> Any:
    """The container component of ``step``: the training image running :func:`step_command`."""
    func = STEP_FUNCTIONS[step]
    signature = inspect.signature(func)

    def spec(*args: Any) -> dsl.ContainerSpec:
        argv = step_command(step, dict(zip(signature.parameters, args)))
        return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=argv[:4], args=argv[4:])

    spec.__name__ = spec.__qualname__ = func.__name__
    spec.__doc__ = func.__doc__
    spec.__signature__ = signature  # type: ignore[attr-defined]
    spec.__annotations__ = dict(func.__annotations__)
    return dsl.container_component(spec)


def local_component(step: str) -> Any:
    """The lightweight twin of ``step`` for kfp.local (same interface, same command line)."""
    return dsl.component(STEP_FUNCTIONS[step], base_image=LOCAL_BASE_IMAGE, install_kfp_package=False)


def container_components() -> dict[str, Any]:
    return {step: container_component(step) for step in STEP_FUNCTIONS}


def local_components() -> dict[str, Any]:
    return {step: local_component(step) for step in STEP_FUNCTIONS}


# --- the pipeline -------------------------------------------------------------------------------


def _configure(task: Any, step: str, image: Any, pvc: Any, containers: bool, retries: int) -> Any:
    """Kubernetes settings of a step's pod. The local twin gets them too (kfp.local ignores
    resources and platform config), so both graphs compile to the same tasks; only the image
    and the retries differ (a local failure should show at once, not after 6 minutes of back-off)."""
    task.set_caching_options(enable_caching=False)
    task.set_display_name(step)
    requests, limits = pod_resources(step)
    task.set_cpu_request(requests["cpu"]).set_memory_request(requests["memory"])
    task.set_cpu_limit(limits["cpu"]).set_memory_limit(limits["memory"])
    kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=PVC_MOUNT)
    kubernetes.use_secret_as_env(task, secret_name=STEP_SECRET, secret_key_to_env={k: k for k in SECRET_KEYS})
    if step == "report":
        kubernetes.use_secret_as_env(task, secret_name=STEP_SECRET, optional=True,
                                     secret_key_to_env={k: k for k in REPORT_SECRET_KEYS})
    if step in GPU_STEPS:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(int(limits[GPU_RESOURCE]))
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=SHM_SIZE)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    if retries and step not in ("validate", "end-run"):
        task.set_retry(retries, backoff_duration="120s", backoff_factor=2.0, backoff_max_duration="1800s")
    if containers:
        task.set_container_image(image)
    return task


def build_pipeline(steps: Mapping[str, Any], containers: bool, retries: int = RETRIES) -> Any:
    """The pipeline over ``steps`` (container components or their local twins): one graph for both."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Validate, train, refine, evaluate and gate the hemorrhage classifier; "
                              "score with the champion when the gate promoted it.")
    def hemo_retraining(
        image: str = DEFAULT_IMAGE,
        mlflow_uri: str = DEFAULT_MLFLOW_URI,
        pvc: str = DEFAULT_PVC,
        project_dir: str = f"{PVC_MOUNT}/project",
        runs_dir: str = f"{PVC_MOUNT}/runs",
        epochs: Optional[int] = None,
        image_size: Optional[int] = None,
        min_improvement: Optional[float] = None,
        score_shards: int = 1,
        report_mapping: str = "",
        report_out: str = "",
        report_dicom: Optional[str] = None,
        report_dicomweb: Optional[str] = None,
        report_push: Optional[str] = None,
    ) -> None:
        where = {"project_dir": project_dir, "runs_dir": runs_dir, "run_key": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                 "mlflow_uri": mlflow_uri}
        overrides = {"epochs": epochs, "image_size": image_size, "min_improvement": min_improvement}

        def step(name: str, **inputs: Any) -> Any:
            return _configure(steps[name](**where, **inputs), name, image, pvc, containers, retries)

        started = step("start-run", **overrides)
        parent = started.outputs["run_id"]
        ended = step("end-run")
        with dsl.ExitHandler(ended, name="hemo-steps"):
            validated = step("validate", parent_run_id=parent, **overrides)
            trained = step("train", parent_run_id=parent, **overrides).after(validated)
            refined = step("refine", parent_run_id=parent, **overrides).after(trained)
            evaluated = step("evaluate", parent_run_id=parent, **overrides).after(refined)
            gated = step("gate", parent_run_id=parent, **overrides).after(evaluated)
            with dsl.If(gated.outputs["promoted"] == True, name="promoted"):  # noqa: E712 (a pipeline expression)
                planned = step("plan-scoring", shard_count=score_shards,
                               champion_version=gated.outputs["champion_version_after"])
                with dsl.ParallelFor(planned.outputs["shards"], parallelism=MAX_PARALLEL_SHARDS,
                                     name="score-shards") as shard:
                    # each item is a whole work order: taking the model from the item (not from
                    # plan-scoring's `model` output) keeps every input of the loop one item
                    scored = step("score", parent_run_id=parent, shard=shard.index, shard_count=shard.count,
                                  model=shard.model, **overrides)
                merged = step("merge-scores", shard_count=score_shards).after(scored)  # after every shard
                # the DICOM SR / FHIR reports where the site configured its PACS (README "Results back to the PACS")
                with dsl.If(report_mapping != "", name="report-configured"):
                    step("report", parent_run_id=parent, mapping=report_mapping, out=report_out,
                         dicom=report_dicom, dicomweb=report_dicomweb, push=report_push).after(merged)

    return hemo_retraining


def compile_pipeline(out: Path) -> Path:
    compiler.Compiler().compile(build_pipeline(container_components(), containers=True), str(out))
    return out


def _named_task_output(channel: str, io_store: Any) -> tuple[bool, Any]:
    """(True, value) when ``[pipelinechannel--]<task>-<output>`` names an output kfp.local holds.
    Output names are Python identifiers (no '-'), so the text after the last '-' is the output and
    the rest the task."""
    task, _, output = channel.removeprefix("pipelinechannel--").rpartition("-")
    if task and output:
        try:
            return True, io_store.get_task_output(task, output)
        except (ValueError, KeyError):
            pass
    return False, None


def _resolve_named_outputs_in_local_conditions() -> None:
    """Let kfp.local read ``dsl.If(gate.outputs["promoted"] == True)`` as the cluster does.

    kfp.local 2.17.3 resolves a condition's ``pipelinechannel--<task>-<output>`` only for an output
    named ``Output`` (a returned value); for a named output such as gate's ``promoted`` it logs
    "Could not resolve CEL parameter" and takes the branch as False, so score would silently never
    run. So the task output the reference names (:func:`_named_task_output`) is tried first, then
    kfp's own resolution. Only the local runner is patched; the compiled pipeline is untouched, and
    the local test fails if score does not run after a promotion."""
    from kfp.local.orchestrator import enhanced_dag_orchestrator

    evaluator = enhanced_dag_orchestrator.ConditionEvaluator
    original = evaluator.__dict__["_resolve_pipeline_channel"].__func__
    if getattr(original, "_hemo_named_outputs", False):
        return

    def resolve(channel_ref: str, io_store: Any) -> Any:
        found, value = _named_task_output(channel_ref, io_store)
        return value if found else original(channel_ref, io_store)

    resolve._hemo_named_outputs = True  # type: ignore[attr-defined]
    evaluator._resolve_pipeline_channel = staticmethod(resolve)


def _resolve_named_outputs_in_local_loops() -> None:
    """Let kfp.local iterate ``dsl.ParallelFor(plan.outputs["shards"])`` as the cluster does.

    kfp.local 2.17.3 takes a loop's items from a task output only when that output is named
    ``Output``; for any other name it looks for a pipeline input of that name and fails
    ("Parent pipeline input argument 'pipelinechannel--plan-scoring-shards' not found"). So,
    before kfp's own resolution, the named task output the items refer to is put where kfp
    looks. As above, only the local runner is patched, and the local test fails unless every
    shard was scored and merged."""
    from kfp.local.orchestrator import enhanced_dag_orchestrator

    original = enhanced_dag_orchestrator._run_parallel_for_task
    if getattr(original, "_hemo_named_outputs", False):
        return

    def run_parallel_for(**kwargs: Any) -> bool:
        spec, io_store = kwargs["task_spec"], kwargs["io_store"]
        if spec.WhichOneof("iterator") == "parameter_iterator" and \
                spec.parameter_iterator.items.HasField("input_parameter"):
            channel = spec.parameter_iterator.items.input_parameter.removeprefix("pipelinechannel--")
            channel = channel.replace("-loop-item", "")
            found, value = _named_task_output(channel, io_store)
            if found:
                io_store.put_parent_input(channel, value)
        return original(**kwargs)

    run_parallel_for._hemo_named_outputs = True  # type: ignore[attr-defined]
    enhanced_dag_orchestrator._run_parallel_for_task = run_parallel_for


def run_local(arguments: Mapping[str, Any], pipeline_root: Path) -> float:
    """Run the pipeline's local twin with kfp.local (SubprocessRunner, this Python); seconds taken.

    kfp.local 2.17.3 cannot leave an optional pipeline input out (it fails on the missing default,
    "Unknown value type") nor pass None, so every override gets a value here: one not given takes
    the project's own setting (params.yaml through hemo_pipeline.services.settings), which is what the step
    would use without the override, and an optional report input not given takes "" (which the
    local twin leaves out). On a cluster the inputs stay optional (IfPresent)."""
    from kfp import local

    from hemo_pipeline.services.settings import load_settings

    settings = load_settings(Path(arguments["project_dir"]) / "params.yaml")
    given = dict(arguments)
    for key, setting in OVERRIDE_KEYS.items():
        if given.get(key) is None:
            section, name = setting.split(".")
            given[key] = getattr(getattr(settings, section), name)
    for key in REPORT_OPTIONAL:
        given[key] = given.get(key) or ""
    _resolve_named_outputs_in_local_conditions()
    _resolve_named_outputs_in_local_loops()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    pipeline = build_pipeline(local_components(), containers=False, retries=0)
    started = time.perf_counter()
    # kfp.local indents its tasks' output by swapping builtins.print and restoring it afterwards;
    # the parallel-for's threads restore each other's swaps, which can leave print indenting for
    # good (seen: our summary line printed as "    kfp.local: ..."). Put the real one back.
    real_print = builtins.print
    try:
        pipeline(**given)
    except RuntimeError as exc:  # kfp.local raises when a task failed (after the exit handler ran)
        raise LocalRunFailed(str(exc), time.perf_counter() - started) from exc
    finally:
        builtins.print = real_print
    return time.perf_counter() - started


class LocalRunFailed(RuntimeError):
    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.kubeflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("compile", help="compile the container pipeline to Kubeflow IR YAML")
    build.add_argument("--out", type=Path, default=Path("pipeline.yaml"))
    local = sub.add_parser("run-local", help="run the pipeline with kfp.local (`hemo` from PATH)")
    local.add_argument("--project-dir", type=Path, required=True, help="holds data/ and params.yaml")
    local.add_argument("--runs-dir", type=Path, required=True, help="each run works in <runs-dir>/<run id>")
    local.add_argument("--mlflow-uri", required=True)
    local.add_argument("--pipeline-root", type=Path, default=Path("kfp_local_outputs"))
    for key in OVERRIDE_KEYS:
        local.add_argument(f"--{key.replace('_', '-')}", type=float if key == "min_improvement" else int)
    local.add_argument("--score-shards", type=int, default=1, help="score in this many parallel shards")
    for key in REPORT_INPUTS:
        local.add_argument(f"--{key.replace('_', '-')}", default=None if key in REPORT_OPTIONAL else "",
                           help="the report step's " + key.removeprefix("report_") + " (report runs where --report-mapping "
                                "is given)")
    args = parser.parse_args(argv)
    if args.command == "compile":
        print(f"compiled {compile_pipeline(args.out)}")
        return 0
    arguments = {"project_dir": str(args.project_dir.resolve()), "runs_dir": str(args.runs_dir.resolve()),
                 "mlflow_uri": args.mlflow_uri, "score_shards": args.score_shards,
                 **{key: getattr(args, key) for key in OVERRIDE_KEYS},
                 **{key: getattr(args, key) for key in REPORT_INPUTS}}
    try:
        seconds = run_local(arguments, args.pipeline_root.resolve())
    except LocalRunFailed as exc:
        print(f"kfp.local: pipeline {PIPELINE_NAME} FAILED after {exc.seconds:.1f} s: {exc}", file=sys.stderr)
        return 1
    print(f"kfp.local: pipeline {PIPELINE_NAME} finished in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
