"""The DAG's `report` task in a real Airflow run (`airflow dags test`, local runner): a DICOM
phantom imported with `hemo import-dicom` (the test series' UID mapping kept in a private folder),
the site's report configured as Airflow Variables, and the whole DAG run from training to the DICOM
SR and FHIR reports of the scored series, written to the run's own private subfolder. No UID of
the mapping reaches the task logs, the run folder or the project."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from hemo_pipeline.orchestration.runners import safe_run_key
from tests.conftest import run_ok
from tests.e2e.test_airflow_dag import AIRFLOW, cli_json
from tests.e2e.test_dvc_dicom import PARAMS

REPO = Path(__file__).resolve().parents[2]
SALT = {"HEMO_DICOM_SALT": "ci-salt"}  # with PARAMS' split salt the 8 phantom series fall 4/2/2


def _airflow(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"airflow {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def imported_dicom_project(root: Path) -> tuple[Path, Path, Path]:
    """(project, private mapping, DICOM folder): an 8 + 2 series DICOM phantom imported as a site
    would (`hemo import-dicom`, the test series' UID mapping in a private folder beside the project)."""
    project, private, dicom = root / "project", root / "private", root / "dicom"
    project.mkdir()
    private.mkdir(mode=0o700)
    (project / "params.yaml").write_text(PARAMS)
    run_ok(["hemo", "synth", "--format", "dicom", "--out", str(dicom), "--train-patients", "8", "--test-patients", "2",
            "--image-size", "64", "--seed", "3"], project)
    run_ok(["hemo", "import-dicom", "--dicom", str(dicom / "train"), "--labels", str(dicom / "train_labels.csv"),
            "--split", "train", "--out", "data", "--reports", "reports"], project, **SALT)
    mapping = private / "test_mapping.csv"
    run_ok(["hemo", "import-dicom", "--dicom", str(dicom / "test"), "--split", "test", "--out", "data", "--reports",
            "reports/import-test", "--mapping", str(mapping)], project, **SALT)
    shutil.rmtree(project / "reports")  # the pipeline's steps write into the run folder only
    return project, mapping, dicom


@pytest.mark.slow
def test_dag_run_reports_the_scored_series_where_the_site_configured_it(tmp_path: Path) -> None:
    project, mapping, dicom = imported_dicom_project(tmp_path)
    private = mapping.parent

    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "hemo_retraining.py", dags)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "HEMO_PROJECT_DIR": str(project),
           "HEMO_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1"}
    _airflow(env, "db", "migrate")
    for name, value in {"mapping": mapping, "source": dicom / "test", "out": private / "results"}.items():
        _airflow(env, "variables", "set", f"hemo_report_{name}", str(value))

    started = time.perf_counter()
    run = subprocess.run([AIRFLOW, "dags", "test", "hemo_retraining", "-c",
                          json.dumps({"runner": "local", "sync_data": False})],
                         env=env, capture_output=True, text=True, timeout=900)
    print(f"airflow dags test hemo_retraining with the report: {time.perf_counter() - started:.1f} s")
    runs = cli_json(_airflow(env, "dags", "list-runs", "hemo_retraining", "-o", "json").stdout)
    run_id = str(max(runs, key=lambda r: r.get("start_date") or "")["run_id"])
    states = {row["task_id"]: row["state"] for row in cli_json(
        _airflow(env, "tasks", "states-for-dag-run", "hemo_retraining", run_id, "-o", "json").stdout)}
    assert states["report"] == "success" and states["end_run"] == "success", \
        f"{states}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"

    results = private / "results" / safe_run_key(run_id)  # each DAG run writes into its own subfolder
    exams = {p.parent.name for p in results.glob("ID_*/sr.dcm")}
    with (tmp_path / "runs" / safe_run_key(run_id) / "outputs" / "exams.csv").open() as handle:
        assert exams == {row["dirname"] for row in csv.DictReader(handle)} and len(exams) == 2
    assert len(list(results.glob("ID_*/diagnostic_report.json"))) == 2
    with mapping.open() as handle:
        rows = list(csv.DictReader(handle))
    studies = {row["StudyInstanceUID"] for row in rows}
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
            for p in results.glob("ID_*/sr.dcm")} <= studies  # filed under the source studies
    counts = json.loads((tmp_path / "runs" / safe_run_key(run_id) / "reports" / "report.json").read_text())
    assert counts["exams"] == counts["sr"] == counts["fhir"] == 2, counts

    uids = {row[c] for row in rows for c in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    assert not [uid for uid in uids if uid in run.stdout + run.stderr]  # `dags test` prints the task logs here
    for folder in (tmp_path / "airflow", tmp_path / "runs", project):  # Airflow's home and DB, run folder, project
        for path in folder.rglob("*"):
            if path.is_file():
                text = path.read_bytes().decode("latin-1")
                assert not [uid for uid in uids if uid in text], path
