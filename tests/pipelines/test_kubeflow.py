"""The Kubeflow pipeline (pipelines/kubeflow.py), from the main venv through the kfp venv:

* the compiled IR: tasks and their order, the exit handler and the promoted? branch, GPUs only
  on train/refine/score, parameters, outputs, caching off, retries, the PVC; the committed
  pipeline.yaml is what `make pipeline.yaml` produces now;
* the container command of every step, resolved as Kubeflow resolves it, is the argv the local
  twin runs (one command line per step, whichever component runs it);
* kfp.local runs the same pipeline end to end on tiny data against a real MLflow server: a
  champion in the registry and predictions, every step nested under one FINISHED parent run; and
  a run on invalid data stops at validate with the parent run FAILED.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from hemo_pipeline.orchestration.runners import DEFAULT_IMAGE, GPU_RESOURCE, GPU_STEPS
from tests.conftest import TINY_PARAMS, running_mlflow_server
from tests.pipelines.kfp_venv import REPO, run_kfp

STEPS = ("start-run", "validate", "train", "refine", "evaluate", "gate", "plan-scoring", "score", "merge-scores",
         "report", "end-run")
IN_HANDLER = ("validate", "train", "refine", "evaluate", "gate")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    result = run_kfp("-m", "pipelines.kubeflow", "compile", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    spec, platform = yaml.safe_load_all(out.read_text())
    return {"text": out.read_text(), "spec": spec, "platform": platform["platforms"]["kubernetes"]["deploymentSpec"]}


def _tasks(spec: dict[str, Any], component: str | None = None) -> dict[str, Any]:
    dag = spec["root"]["dag"] if component is None else spec["components"][component]["dag"]
    return dag["tasks"]


def _all_tasks(spec: dict[str, Any]) -> dict[str, Any]:
    tasks = dict(_tasks(spec))
    for component in spec["components"].values():
        if "dag" in component:
            tasks.update(component["dag"]["tasks"])
    return tasks


def _executor(spec: dict[str, Any], step: str) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def test_committed_pipeline_yaml_is_current(compiled: dict[str, Any]) -> None:
    committed = REPO / "pipeline.yaml"
    assert committed.is_file(), "pipeline.yaml is missing: run `make pipeline.yaml` and commit it"
    assert committed.read_text() == compiled["text"], "pipeline.yaml is stale: run `make pipeline.yaml` and commit it"


def test_graph_start_run_then_an_exit_handler_around_the_steps_and_score_only_when_promoted(
        compiled: dict[str, Any]) -> None:
    spec = compiled["spec"]
    root = _tasks(spec)
    assert set(root) == {"start-run", "exit-handler-1", "end-run"}
    assert root["exit-handler-1"]["taskInfo"]["name"] == "hemo-steps"
    assert root["exit-handler-1"]["dependentTasks"] == ["start-run"]
    handler = _tasks(spec, "comp-exit-handler-1")
    assert set(handler) == {*IN_HANDLER, "condition-2"}
    chain = ["validate", "train", "refine", "evaluate", "gate"]
    assert "dependentTasks" not in handler["validate"]
    for before, after in zip(chain, chain[1:]):
        assert handler[after]["dependentTasks"] == [before]
    branch = handler["condition-2"]
    assert branch["dependentTasks"] == ["gate"] and branch["taskInfo"]["name"] == "promoted"
    assert branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-promoted'] == true"
    assert branch["inputs"]["parameters"]["pipelinechannel--gate-promoted"]["taskOutputParameter"] == {
        "outputParameterKey": "promoted", "producerTask": "gate"}
    # promoted: plan the shards, score them in a parallel-for pinned to one model, then merge
    promoted = _tasks(spec, "comp-condition-2")
    assert set(promoted) == {"plan-scoring", "for-loop-3", "merge-scores", "condition-4"}
    assert promoted["plan-scoring"]["inputs"]["parameters"]["champion_version"] == {
        "componentInputParameter": "pipelinechannel--gate-champion_version_after"}
    assert promoted["plan-scoring"]["inputs"]["parameters"]["shard_count"] == {
        "componentInputParameter": "pipelinechannel--score_shards"}
    loop = promoted["for-loop-3"]
    assert loop["dependentTasks"] == ["plan-scoring"] and loop["taskInfo"]["name"] == "score-shards"
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--plan-scoring-shards"}
    assert loop["iteratorPolicy"]["parallelismLimit"] == 8
    assert set(_tasks(spec, "comp-for-loop-3")) == {"score"}
    shard = _tasks(spec, "comp-for-loop-3")["score"]["inputs"]["parameters"]
    for name, field in (("shard", "index"), ("shard_count", "count"), ("model", "model")):  # one work order each
        assert shard[name] == {"componentInputParameter": "pipelinechannel--plan-scoring-shards-loop-item",
                               "parameterExpressionSelector": f'parseJson(string_value)["{field}"]'}, name
    assert promoted["merge-scores"]["dependentTasks"] == ["for-loop-3"]  # after every shard
    # report: after merge-scores, only where the site gave the private mapping (report_mapping)
    configured = promoted["condition-4"]
    assert configured["dependentTasks"] == ["merge-scores"] and configured["taskInfo"]["name"] == "report-configured"
    assert configured["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--report_mapping'] != ''"
    report = _tasks(spec, "comp-condition-4")["report"]["inputs"]["parameters"]
    for name in ("mapping", "out", "dicom", "dicomweb", "push"):
        assert report[name] == {"componentInputParameter": f"pipelinechannel--report_{name}"}, name
    # end-run: the exit task, runs whatever happened, and receives the steps' final status
    end = root["end-run"]
    assert end["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert end["inputs"]["parameters"]["final_status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}


def test_the_parent_run_id_and_the_gate_decision_are_component_outputs(compiled: dict[str, Any]) -> None:
    spec = compiled["spec"]
    outputs = {name: comp.get("outputDefinitions", {}).get("parameters", {})
               for name, comp in spec["components"].items() if "executorLabel" in comp}
    assert outputs["comp-start-run"] == {"run_id": {"parameterType": "STRING"}}
    assert outputs["comp-gate"] == {"promoted": {"parameterType": "BOOLEAN"}, "reason": {"parameterType": "STRING"},
                                    "champion_version_after": {"parameterType": "STRING"}}
    assert outputs["comp-plan-scoring"] == {"shards": {"parameterType": "LIST"}, "model": {"parameterType": "STRING"}}
    assert outputs["comp-evaluate"] == {"version": {"parameterType": "STRING"}}
    tasks = _all_tasks(spec)
    for step in (*IN_HANDLER, "score"):
        assert tasks[step]["inputs"]["parameters"]["parent_run_id"] == {
            "componentInputParameter": "pipelinechannel--start-run-run_id"}, step
    # each output is written by the step itself: its result field to the output's file
    gate = _executor(spec, "gate")
    assert "HEMO_RESULT_FIELD_PROMOTED={{$.outputs.parameters['promoted'].output_file}}" in gate["args"]
    start = _executor(spec, "start-run")
    assert "HEMO_RESULT_FIELD_RUN_ID={{$.outputs.parameters['run_id'].output_file}}" in start["args"]


def test_gpus_are_requested_by_train_refine_and_score_only(compiled: dict[str, Any]) -> None:
    spec, platform = compiled["spec"], compiled["platform"]["executors"]
    assert GPU_STEPS == {"train", "refine", "score"}
    for step in STEPS:
        resources = _executor(spec, step)["resources"]
        gpu = step in GPU_STEPS
        assert ("accelerator" in resources) == gpu, step
        if gpu:
            assert resources["accelerator"]["resourceType"] == GPU_RESOURCE
            assert resources["accelerator"]["resourceCount"] == "1"
            assert platform[f"exec-{step}"]["tolerations"] == [
                {"effect": "NoSchedule", "key": GPU_RESOURCE, "operator": "Exists"}]
            assert platform[f"exec-{step}"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        else:
            assert "tolerations" not in platform[f"exec-{step}"] and "emptyDirMounts" not in platform[f"exec-{step}"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryLimit"]  # every pod is sized
        (mount,) = platform[f"exec-{step}"]["pvcMount"]
        assert mount["mountPath"] == "/mnt/hemo" and mount["pvcNameParameter"]["componentInputParameter"].endswith("pvc")


def test_every_step_runs_hemo_on_the_image_parameter(compiled: dict[str, Any]) -> None:
    spec = compiled["spec"]
    for step in STEPS:
        container = _executor(spec, step)
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", step
        assert container["command"][:2] == ["sh", "-c"]
        assert container["args"][container["args"].index("hemo") + 1] == step


def test_parameters(compiled: dict[str, Any]) -> None:
    params = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["image"]["defaultValue"] == DEFAULT_IMAGE
    assert {name: p["parameterType"] for name, p in params.items()} == {
        "image": "STRING", "mlflow_uri": "STRING", "pvc": "STRING", "project_dir": "STRING", "runs_dir": "STRING",
        "epochs": "NUMBER_INTEGER", "image_size": "NUMBER_INTEGER", "min_improvement": "NUMBER_DOUBLE",
        "score_shards": "NUMBER_INTEGER", "report_mapping": "STRING", "report_out": "STRING", "report_dicom": "STRING",
        "report_dicomweb": "STRING", "report_push": "STRING"}
    assert params["score_shards"]["defaultValue"] == 1
    assert params["report_mapping"]["defaultValue"] == "" == params["report_out"]["defaultValue"]  # off by default
    for optional in ("report_dicom", "report_dicomweb", "report_push"):
        assert params[optional]["isOptional"] and "defaultValue" not in params[optional]
    for override in ("epochs", "image_size", "min_improvement"):  # not given = params.yaml decides
        assert params[override]["isOptional"] and "defaultValue" not in params[override]
        assert any(f'"InputName": "{override}"' in arg for arg in _executor(compiled["spec"], "train")["args"])


def test_caching_is_off_for_every_task_and_retries_spare_validate_and_end_run(compiled: dict[str, Any]) -> None:
    tasks = {name: task for name, task in _all_tasks(compiled["spec"]).items() if name in STEPS}
    assert set(tasks) == set(STEPS)
    for name, task in tasks.items():
        assert task["cachingOptions"] == {}, name  # {} = enableCache false; a hit would skip real work
        assert ("retryPolicy" in task) == (name not in ("validate", "end-run")), name


# --- one command line per step ------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{\{\$\.(inputs\.parameters\['([^']+)'\]|outputs\.parameters\['([^']+)'\]\.output_file)\}\}")


def _resolve(items: list[str], inputs: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    """Resolve a compiled command as the Kubeflow launcher does: input values (numbers as JSON),
    output files, and IfPresent on the inputs that were given."""
    resolved: list[str] = []
    for item in items:
        if item.startswith('{"IfPresent"'):
            clause = json.loads(item)["IfPresent"]
            resolved += _resolve(clause["Then"] if inputs.get(clause["InputName"]) is not None else
                                 clause.get("Else", []), inputs, outputs)
            continue

        def value(match: re.Match[str]) -> str:
            if match.group(3):
                return outputs[match.group(3)]
            given = inputs[match.group(2)]
            return given if isinstance(given, str) else json.dumps(given)

        resolved.append(PLACEHOLDER.sub(value, item))
    return resolved


@pytest.mark.parametrize("overrides", [{"epochs": 3, "image_size": None, "min_improvement": 0.01}, {}],
                         ids=["some-overrides", "none"])
def test_each_containers_command_is_the_argv_its_local_twin_runs(compiled: dict[str, Any],
                                                                 overrides: dict[str, Any]) -> None:
    base = {"project_dir": "/mnt/hemo/project", "runs_dir": "/mnt/hemo/runs", "run_key": "0b7c-run",
            "mlflow_uri": "http://mlflow:5000", "parent_run_id": "abc123", "shard": 1, "shard_count": 3,
            "model": "models:/hemorrhage-classifier/4", "champion_version": "4",
            "mapping": "/mnt/private/test_mapping.csv", "out": "/mnt/private/results",
            "dicomweb": "https://pacs.example/dicom-web"}  # report: dicom and push not given
    final_status = {"state": "FAILED", "pipelineTaskName": "exit-handler-1", "error": {"message": "Task train failed."}}
    cases = {}
    for step in STEPS:
        declared = compiled["spec"]["components"][f"comp-{step}"]["inputDefinitions"]["parameters"]
        inputs = {k: v for k, v in {**base, **overrides}.items() if k in declared}  # what the component takes
        if step == "end-run":
            inputs["final_status"] = final_status
        outputs = {name: f"/tmp/outputs/{step}/{name}" for name in
                   compiled["spec"]["components"][f"comp-{step}"].get("outputDefinitions", {}).get("parameters", {})}
        cases[step] = (inputs, outputs)
    script = ("import json, sys\nfrom pipelines.steps import step_command\n"
              "cases = json.load(sys.stdin)\n"
              "print(json.dumps({s: step_command(s, {**i, **o}) for s, (i, o) in cases.items()}))")
    result = run_kfp("-c", script, input=json.dumps(cases))
    assert result.returncode == 0, result.stderr[-3000:]
    local = json.loads(result.stdout)
    for step, (inputs, outputs) in cases.items():
        container = _executor(compiled["spec"], step)
        status_json = json.dumps(final_status)
        remote = _resolve(container["command"] + container["args"],
                          {**inputs, "final_status": status_json} if step == "end-run" else inputs, outputs)
        assert remote == local[step], step
        assert remote[4] == "/mnt/hemo/runs/0b7c-run"  # every step works in the run's own folder
        if overrides.get("epochs") and step not in ("end-run", "plan-scoring", "merge-scores", "report"):
            assert "train.epochs=3" in remote and not any("image_size" in a for a in remote)
    shard = local["score"]
    assert shard[shard.index("--shard"):] == ["--shard", "1/3", "--model", "models:/hemorrhage-classifier/4"]
    assert any(a.endswith("/.hemo-results/score.shard-1-of-3.json") for a in shard)  # shards never share one
    assert local["merge-scores"][-2:] == ["--shards", "3"]
    assert local["plan-scoring"][-4:] == ["--shards", "3", "--model", "4"]
    report = local["report"]
    assert report[report.index("--mapping"):] == ["--mapping", "/mnt/private/test_mapping.csv", "--out",
                                                  "/mnt/private/results/0b7c-run", "--dicomweb",
                                                  "https://pacs.example/dicom-web"]


# --- kfp.local: the same pipeline, run here -----------------------------------------------------


def _hemo_on_path(folder: Path) -> str:
    """A `hemo` that runs this checkout's CLI in the main venv (whatever `hemo` the venv installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "hemo"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m hemo_pipeline.cli "$@"\n')
    wrapper.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def _project(root: Path, data: Path) -> Path:
    project = root / "project"
    project.mkdir(parents=True)
    shutil.copytree(data, project / "data")
    (project / "params.yaml").write_text(TINY_PARAMS)
    return project


def _run_local(root: Path, project: Path, mlflow_uri: str, *extra: str) -> tuple[Any, float, Path]:
    started = time.perf_counter()
    result = run_kfp("-m", "pipelines.kubeflow", "run-local", "--project-dir", str(project),
                     "--runs-dir", str(root / "runs"), "--mlflow-uri", mlflow_uri,
                     "--pipeline-root", str(root / "kfp-root"), *extra, timeout=1200, cwd=root,
                     env={"PATH": _hemo_on_path(root / "bin"), "OMP_NUM_THREADS": "1"})
    (run_dir,) = (root / "runs").iterdir()  # one folder per run, named by the run id
    return result, time.perf_counter() - started, run_dir


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory):
    """A fresh MLflow server for this module: the promotion test needs a registry with no champion."""
    with running_mlflow_server(tmp_path_factory.mktemp("kfp-mlflow")) as url:
        yield url


@pytest.mark.slow
def test_kfp_local_runs_the_pipeline_to_a_champion_and_predictions(
        pipeline_data: Path, tmp_path: Path, registry_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    result, wall, run_dir = _run_local(tmp_path, _project(tmp_path, pipeline_data), registry_server, "--epochs", "1",
                                       "--score-shards", "2")
    summary = [line for line in result.stdout.splitlines() if line.startswith("kfp.local:")]
    with capsys.disabled():
        print(f"\n{summary[-1] if summary else 'kfp.local: no summary'} ({wall:.1f} s with the kfp venv's start)")
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-3000:])
    assert summary and re.fullmatch(r"kfp\.local: pipeline hemo-retraining finished in \d+\.\d s", summary[-1]), \
        result.stdout[-2000:]

    results = {p.stem: json.loads(p.read_text()) for p in (run_dir / ".hemo-results").glob("*.json")}
    assert results["gate"]["promoted"] is True
    client = mlflow.MlflowClient(registry_server)
    champion = client.get_model_version_by_alias("hemorrhage-classifier", "champion")
    assert champion.version == results["evaluate"]["version"] == results["plan-scoring"]["model_version"]
    # the parallel-for ran one score task per shard, each with the champion the gate left
    shards = {name: r for name, r in results.items() if name.startswith("score.")}
    assert sorted(shards) == ["score.shard-0-of-2", "score.shard-1-of-2"]
    assert {r["model_version"] for r in shards.values()} == {champion.version}
    assert sum(r["patients"] for r in shards.values()) == 2

    # merge-scores ran after both: the files of one unsharded run, every test slice once, in folder order
    with (run_dir / "outputs" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    test_slices = sorted(p.name for p in (pipeline_data / "test").rglob("*.jpg"))
    assert sorted(r["ID"] for r in rows) == test_slices
    shard_rows = []
    for index in range(2):
        with (run_dir / "outputs" / f"predictions.shard-{index}-of-2.csv").open() as handle:
            shard_rows += list(csv.DictReader(handle))
    assert sorted(rows, key=lambda r: r["ID"]) == sorted(shard_rows, key=lambda r: r["ID"])
    assert json.loads((run_dir / "outputs" / "predictions_models.json").read_text())["models"][0]["version"] == \
        champion.version

    parent = client.get_run(results["start-run"]["run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {c.data.tags.get("hemo.step") for c in children} >= {"validate", "train", "refine", "evaluate",
                                                                "gate", "score"}
    assert {c.data.tags.get("airflow.dag_run_id") for c in children} == {run_dir.name}


@pytest.mark.slow
def test_kfp_local_stops_at_validate_on_bad_data_and_ends_the_parent_failed(pipeline_data: Path, tmp_path: Path,
                                                                             registry_server: str) -> None:
    project = _project(tmp_path, pipeline_data)
    next((project / "data" / "train").rglob("*.jpg")).unlink()
    result, _, run_dir = _run_local(tmp_path, project, registry_server)
    assert result.returncode == 1
    assert "FAILED after" in result.stderr and "'validate'" in result.stderr
    assert not (run_dir / "outputs" / "train").exists()  # nothing trained
    parent_id = json.loads((run_dir / ".hemo-results" / "start-run.json").read_text())["run_id"]
    parent = mlflow.MlflowClient(registry_server).get_run(parent_id)
    assert parent.info.status == "FAILED"
    assert "failed" in parent.data.tags["hemo.end_reason"]


@pytest.mark.slow
def test_kfp_local_reports_the_scored_series_where_the_run_gives_the_mapping(tmp_path: Path) -> None:
    """The report step runs after merge-scores when report_mapping is given: one SR and one FHIR
    report per scored series in <report_out>/<run folder>, filed under the source studies."""
    import pydicom

    from tests.e2e.test_airflow_report import imported_dicom_project

    project, mapping, dicom = imported_dicom_project(tmp_path)
    (tmp_path / "mlflow").mkdir()
    with running_mlflow_server(tmp_path / "mlflow") as url:  # a registry with no champion: the gate promotes
        result, _, run_dir = _run_local(tmp_path, project, url, "--report-mapping", str(mapping), "--report-out",
                                        str(mapping.parent / "results"), "--report-dicom", str(dicom / "test"))
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-3000:])
    results = mapping.parent / "results" / run_dir.name
    with (run_dir / "outputs" / "exams.csv").open() as handle:
        scored = {row["dirname"] for row in csv.DictReader(handle)}
    assert {p.parent.name for p in results.glob("ID_*/sr.dcm")} == scored and len(scored) == 2
    assert len(list(results.glob("ID_*/diagnostic_report.json"))) == 2
    with mapping.open() as handle:
        studies = {row["StudyInstanceUID"] for row in csv.DictReader(handle)}
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in results.glob("*/sr.dcm")} <= studies
    assert json.loads((run_dir / ".hemo-results" / "report.json").read_text())["sr"] == 2


def test_the_local_twin_compiles_to_the_same_graph(compiled: dict[str, Any], tmp_path: Path) -> None:
    """What kfp.local runs is this pipeline: same tasks, edges, conditions, inputs, outputs, caching,
    resources and Kubernetes settings; only the executors (image + how the argv is started) and the
    retries (none locally) differ."""
    out = tmp_path / "local.yaml"
    script = ("import sys\nfrom kfp import compiler\nfrom pipelines.kubeflow import build_pipeline, local_components\n"
              "compiler.Compiler().compile(build_pipeline(local_components(), containers=False, retries=0), sys.argv[1])")
    result = run_kfp("-c", script, str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    local_spec, local_platform = yaml.safe_load_all(out.read_text())

    image_plumbing = {"base_image", "pipelinechannel--image", "retryPolicy"}

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in image_plumbing}
        return [scrub(v) for v in value] if isinstance(value, list) else value

    def graph(spec: dict[str, Any]) -> dict[str, Any]:
        resources = {name: e["container"].get("resources") for name, e in spec["deploymentSpec"]["executors"].items()}
        return scrub({"components": spec["components"], "root": spec["root"], "resources": resources})

    assert graph(local_spec) == graph(compiled["spec"])
    assert local_platform["platforms"]["kubernetes"]["deploymentSpec"] == compiled["platform"]
