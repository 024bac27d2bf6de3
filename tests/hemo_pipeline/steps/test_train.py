"""`hemo train` with the default embedded MLflow store (sqlite:///mlflow.db): outputs, the
run tree and its tags, and --resume continuing a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from hemo_pipeline.cli import main


def test_train_logs_to_embedded_store_and_resumes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "2"]) == 0
    assert (workdir / "mlflow.db").is_file()
    assert (workdir / "outputs/train/best.pt").is_file() and (workdir / "outputs/train/last.pt").is_file()
    summary = json.loads((workdir / "reports/train.json").read_text())
    assert summary["best_epoch"] == 1 and 0.0 <= summary["best_val_micro_f2_single"] <= 1.0
    roles = json.loads((workdir / "reports/split.json").read_text())
    assert roles["counts"] == {"train": 2, "val": 2, "gate": 2} and len(roles["roles"]) == 6

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list")
    train_run = next(r for r in runs if r.data.tags.get("hemo.step") == "train")
    parent = json.loads((workdir / "outputs/pipeline_run.json").read_text())["run_id"]
    assert train_run.data.tags["mlflow.parentRunId"] == parent
    for tag in ("mlflow.source.git.commit", "hemo.data_md5", "hemo.params_hash"):
        assert train_run.data.tags[tag]
    assert train_run.data.params["train.image_size"] == "64"  # from params.yaml
    assert "val_micro_f2" in train_run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(train_run.info.run_id, "plots")}
    assert "plots/train_curve.png" in artifacts

    # An "interrupted" 1-epoch run continues to epoch 2 instead of starting over.
    assert main(["train", "--max-steps", "2", "--epochs", "2", "--resume"]) == 0
    with (workdir / "reports/train_history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_resume_without_checkpoint_is_a_clear_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume"]) == 2
    assert "--resume given but" in capsys.readouterr().err


@pytest.mark.parametrize("step", ["train", "refine"])
def test_a_bad_group_timeout_is_a_user_error(workdir: Path, monkeypatch: pytest.MonkeyPatch, step: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun (RANK/WORLD_SIZE set) the step reads HEMO_DIST_TIMEOUT_S before it joins the group."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("HEMO_DIST_TIMEOUT_S", "soon")
    if step == "refine":
        monkeypatch.setenv("HEMO_DIST_TIMEOUT_S", "0")
        _stage_one(workdir)
    assert main([step, "--device", "cpu"]) == 2
    assert "error: HEMO_DIST_TIMEOUT_S=" in capsys.readouterr().err


def _stage_one(workdir: Path) -> None:
    """A stage-1 checkpoint where refine looks for it, without training."""
    from hemo_model.model.networks import HemoNet
    from hemo_model.model.spec import ModelSpec
    from hemo_model.model.storage import save_checkpoint

    save_checkpoint(workdir / "outputs" / "train" / "best.pt", HemoNet(head="linear"),
                    ModelSpec(head="linear", image_size=64))


def test_stale_pipeline_run_from_another_store_is_ignored(workdir: Path, sqlite_tracking_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Switching MLFLOW_TRACKING_URI must not break steps that find an old pipeline_run.json."""
    from hemo_pipeline.services import tracking
    from hemo_pipeline.services.settings import Settings

    (workdir / "outputs").mkdir()
    (workdir / "outputs/pipeline_run.json").write_text('{"run_id": "0123456789abcdef", "tracking_uri": "sqlite:///elsewhere.db"}')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_tracking_uri)
    assert tracking.parent_run_id() is None
    monkeypatch.setenv("HEMO_PARENT_RUN_ID", "0123456789abcdef")  # given but does not exist there
    with tracking.step_run("validate", Settings()) as run:
        pass
    assert "mlflow.parentRunId" not in mlflow.get_run(run.info.run_id).data.tags


def test_same_seed_same_model_across_processes(workdir: Path) -> None:
    """Two `hemo train` runs with the same params give identical weights (initialisation included)."""
    import subprocess
    import sys

    import torch

    hemo = str(Path(sys.executable).with_name("hemo"))
    for out in ("a", "b"):
        subprocess.run([hemo, "train", "--max-steps", "1", "--out", f"outputs/{out}"], check=True, capture_output=True,
                       timeout=300)
    a = torch.load(workdir / "outputs/a/best.pt", weights_only=True)["model_state"]
    b = torch.load(workdir / "outputs/b/best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refinement_keeps_stage1_batchnorm_statistics(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At a learning rate that surely moves the weights, the refined network's BatchNorm running
    statistics are still stage 1's (refine.batchnorm: frozen); the tiny val role (2 patients) cannot
    tell, so the method's refinement moves on, and the step says why."""
    import torch

    from hemo_model.model.storage import load_checkpoint

    assert main(["train", "--max-steps", "2"]) == 0
    assert main(["refine", "--max-steps", "2", "--lr", "0.01"]) == 0
    assert "val role too small to tell: the method's refinement moves on" in capsys.readouterr().out
    summary = json.loads((workdir / "reports/refine.json").read_text())
    assert summary["kept_refinement"] is True and summary["selection"] == "last" and summary["batchnorm"] == "frozen"
    stage1, refined = (load_checkpoint(workdir / f"outputs/{step}/best.pt")[0].state_dict() for step in ("train", "refine"))
    statistics = [k for k in stage1 if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(stage1[k], refined[k]) for k in statistics)
    assert not all(torch.equal(stage1[k], refined[k]) for k in stage1 if k not in statistics)  # the weights moved


def test_repeat_factor_sampling_reports_what_it_draws(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """reports/train.json records each class's share of the training slices and of an epoch's
    expected draws: the data's shares are the same under both rules, the rarest class's share of
    draws is lifted under repeat_factor."""
    assert main(["train", "--max-steps", "1"]) == 0
    uniform = json.loads((workdir / "reports/train.json").read_text())
    assert uniform["sampling"] == "uniform"
    assert "share of draws" not in capsys.readouterr().out

    assert main(["train", "--max-steps", "1", "--set", "train.sampling=repeat_factor",
                 "--set", "train.repeat_threshold=1.0"]) == 0
    lifted = json.loads((workdir / "reports/train.json").read_text())
    assert lifted["sampling"] == "repeat_factor"
    shares = lifted["class_share"]
    assert shares.keys() == uniform["class_share"].keys() == {"ich", "ivh", "sah", "sdh", "edh"}
    assert all(shares[c]["slices"] == uniform["class_share"][c]["slices"] for c in shares)
    rarest = min((c for c in shares if shares[c]["slices"] > 0), key=lambda c: shares[c]["slices"])
    assert shares[rarest]["drawn"] > shares[rarest]["slices"]
    assert "repeat_factor sampling (t=1.0), share of draws positive per class: ich" in capsys.readouterr().out


def test_an_unknown_sampling_rule_is_one_line_and_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "1", "--set", "train.sampling=oversample"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.sampling" in err[0] and "repeat_factor" in err[0]


def test_refit_on_val_trains_on_val_and_leaves_nothing_tuned_on_it(workdir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """train.refit_on_val: the val patients join stage 1 and refinement (and the checkpoint's
    provenance, which the gate checks), the last epoch and the method's refinement move on, and
    evaluate keeps every threshold at 0.5 instead of tuning on patients the model trained on.
    Without it, the val patients stay out of training."""
    from hemo_model.model.storage import load_checkpoint
    from hemo_pipeline.services.patient_roles import load_roles
    from hemo_pipeline.services.settings import load_settings

    roles = load_roles(Path("data"), load_settings(Path("params.yaml")).split)
    val = {p.patient_key for p in roles["val"]}
    assert val and main(["train", "--max-steps", "1"]) == 0
    held_out = load_checkpoint(workdir / "outputs/train/best.pt")[2]["provenance"]
    assert not val & set(held_out["train_patients"])
    capsys.readouterr()
    assert main(["evaluate", "--no-register", "--model", "outputs/train/best.pt"]) == 0
    assert "thresholds kept at 0.5:" not in capsys.readouterr().out

    refit = ["--set", "train.refit_on_val=true"]
    assert main(["train", "--max-steps", "1", *refit]) == 0
    summary = json.loads((workdir / "reports/train.json").read_text())
    assert summary["refit_on_val"] is True and summary["selection"] == "last"
    assert "train.refit_on_val" in summary["selection_reason"]
    assert summary["train_patients"] == len(roles["train"]) + len(roles["val"])
    trained = load_checkpoint(workdir / "outputs/train/best.pt")[2]["provenance"]
    assert val <= set(trained["train_patients"])

    # a refine run without the refit still continues a model that trained on val: it may not choose on it
    assert main(["refine", "--max-steps", "1", "--set", "selection.rule=best"]) == 0
    mismatch = json.loads((workdir / "reports/refine.json").read_text())
    assert mismatch["selection"] == "last" and "train.refit_on_val" in mismatch["selection_reason"]

    assert main(["refine", "--max-steps", "1", *refit]) == 0
    refined = json.loads((workdir / "reports/refine.json").read_text())
    assert refined["kept_refinement"] is True and "train.refit_on_val" in refined["kept_reason"]
    assert val <= set(load_checkpoint(workdir / "outputs/refine/best.pt")[2]["provenance"]["train_patients"])

    capsys.readouterr()
    assert main(["evaluate", "--no-register", *refit]) == 0
    assert f"thresholds kept at 0.5: {len(roles['val'])} of the {len(roles['val'])} val scans were trained on" \
        in capsys.readouterr().out
    report = json.loads((workdir / "reports/evaluate.json").read_text())
    assert report["calibration"]["fitted_on_trained_patients"] is True
    assert report["calibration"]["stored_with_model"] is False  # cut-offs fitted on its own training exams
    assert set(report["thresholds"].values()) == {0.5} and set(report["thresholds_single"].values()) == {0.5}
