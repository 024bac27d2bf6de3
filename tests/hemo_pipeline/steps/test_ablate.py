"""`hemo ablate` on tiny data: every variant trained by the pipeline's own code, scored on the
val patients (selection never looks at the gate role) with paired bootstrap intervals, a table and
a figure in MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest

from hemo_pipeline.cli import main


@pytest.mark.slow
def test_ablate_runs_every_variant_and_reports_intervals(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ablate", "--device", "cpu", "--set", "train.max_steps=2", "--set", "refine.head_epochs=2"]) == 0
    with open("reports/ablate/ablation.csv") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["reference", "single slice", "loss bce", "head method", "context conv1d", "context bigru"]
    for row in rows.values():
        low, point, high = float(row["low"]), float(row["micro_f2"]), float(row["high"])
        assert 0.0 <= low <= point <= high <= 1.0
        assert float(row["diff_low"]) <= float(row["diff"]) <= float(row["diff_high"])
    reference = rows["reference"]
    assert float(reference["diff"]) == float(reference["diff_low"]) == float(reference["diff_high"]) == 0.0
    assert Path("reports/ablate/ablation.png").stat().st_size > 1000
    table = Path("reports/ablate/ablation.md").read_text()
    assert "| context bigru |" in table
    from hemo_pipeline.services.patient_roles import load_roles
    from hemo_pipeline.services.settings import load_settings

    roles = load_roles(Path("data"), load_settings(Path("params.yaml")).split)
    assert roles["val"] != roles["gate"]
    assert f"Val patients (selection never looks at the gate role): {len(roles['val'])};" in table
    assert f"scored on {len(roles['val'])} val patients" in capsys.readouterr().out

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("hemo.step") == "ablate")
    children = {r.data.tags["hemo.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"ablate:reference", "ablate:loss-bce", "ablate:head-method", "ablate:conv1d", "ablate:bigru"}
    assert parent.data.metrics["reference.micro_f2"] == pytest.approx(float(reference["micro_f2"]))
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "ablate")}
    assert {"ablate/ablation.md", "ablate/ablation.csv"} <= artifacts
    assert not (workdir / "outputs/pipeline_run.json").exists()  # the pipeline's own record is untouched
