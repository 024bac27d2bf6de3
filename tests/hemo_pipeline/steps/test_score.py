"""`hemo score` and model loading: bad input gives one clear error and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_pipeline.cli import main


@pytest.fixture
def earlier_output(workdir: Path) -> Path:
    out = workdir / "outputs" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("earlier predictions\n")
    return out


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_alias(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--data", "data/test", "--out", str(earlier_output)]) == 2
    assert "no model version has alias 'champion'" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_unreadable_checkpoint(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "broken.pt").write_bytes(b"not a checkpoint")
    assert main(["score", "--model", "broken.pt", "--data", "data/test", "--out", str(earlier_output)]) == 2
    error = _error(capsys)
    assert "cannot use checkpoint broken.pt: not a PyTorch checkpoint" in error and "truncated" not in error
    assert main(["score", "--model", "nope.pt", "--data", "data/test", "--out", str(earlier_output)]) == 2
    assert "nope.pt does not exist" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_data_folder_without_images(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty").mkdir()
    assert main(["score", "--model", "x.pt", "--data", "empty", "--out", str(earlier_output)]) == 2
    assert "empty holds no patient folders" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_gate_without_challenger(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate"]) == 2
    assert "outputs/challenger.json not found: run `hemo evaluate` first" in _error(capsys)


def test_refine_without_stage_one(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["refine"]) == 2
    assert "run `hemo train` first" in _error(capsys)


def test_unknown_params_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "params.yaml").write_text("train: {epoch: 3}\n")
    assert main(["train"]) == 2
    assert "params.yaml: unknown key 'train.epoch'; did you mean 'epochs'?" in _error(capsys)


def _checkpoint(path: Path, seed: int, thresholds: list[float]) -> Path:
    import torch

    from hemo_model.model.networks import HemoNet
    from hemo_model.model.spec import ModelSpec
    from hemo_model.model.storage import save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(path, HemoNet(head="linear"), ModelSpec(head="linear", image_size=64, thresholds=thresholds))
    return path


def _probabilities(path: Path) -> dict[str, list[float]]:
    import csv

    with path.open() as handle:
        return {row["ID"]: [float(row[c]) for c in ("ich", "ivh", "sah", "sdh", "edh")] for row in csv.DictReader(handle)}


def test_ensemble_averages_logits_before_the_context_and_names_its_models(workdir: Path) -> None:
    import json

    import numpy as np

    a = _checkpoint(workdir / "a.pt", 1, [0.4] * 5)
    b = _checkpoint(workdir / "b.pt", 2, [0.6] * 5)
    for name, models in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        args = [x for m in models for x in ("--model", str(m))]
        assert main(["score", *args, "--data", "data/test", "--out", f"{name}.csv", "--device", "cpu"]) == 0
    pa, pb, pab = (_probabilities(workdir / f"{n}_probabilities.csv") for n in ("a", "b", "ab"))

    def logit(p: list[float]) -> np.ndarray:
        q = np.clip(np.array(p), 1e-6, 1 - 1e-6)
        return np.log(q / (1 - q))

    compared = 0
    for slice_id in pab:  # the context filter is linear: filter(mean of logits) = mean of filtered logits
        both = np.array([pa[slice_id], pb[slice_id]])
        usable = ((both > 1e-3) & (both < 1 - 1e-3)).all(axis=0)  # the CSV rounds to 6 decimals
        expected = 1 / (1 + np.exp(-(logit(pa[slice_id]) + logit(pb[slice_id])) / 2))
        assert np.allclose(np.array(pab[slice_id])[usable], expected[usable], atol=2e-4)
        compared += int(usable.sum())
    assert compared > 50
    used = json.loads((workdir / "ab_models.json").read_text())
    assert [m["source"] for m in used["models"]] == [str(a), str(b)] and used["ensemble"] is True
    assert used["thresholds"] == [0.5] * 5  # the mean of the members' thresholds


def test_loader_workers_do_not_change_predictions(workdir: Path) -> None:
    model = _checkpoint(workdir / "m.pt", 3, [0.5] * 5)
    for workers in (0, 2):
        assert main(["score", "--model", str(model), "--data", "data/test", "--out", f"w{workers}.csv", "--device",
                     "cpu", "--set", f"data.workers={workers}"]) == 0
    assert (workdir / "w0_probabilities.csv").read_bytes() == (workdir / "w2_probabilities.csv").read_bytes()


def test_sharded_scoring_merges_to_the_unsharded_files_byte_for_byte(workdir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = _checkpoint(workdir / "m.pt", 4, [0.45, 0.5, 0.55, 0.5, 0.4])
    data = workdir / "many"  # 2 test patients are few for shards: six folders of three patients' copies
    for i, patient in enumerate(sorted((workdir / "data/test").iterdir()) * 3):
        stem = f"{i:02d}{patient.name[5:]}"
        target = data / f"ID_{stem}"
        target.mkdir(parents=True)
        for slice_file in patient.iterdir():
            shutil.copy(slice_file, target / f"{stem}_{slice_file.name.split('_')[1]}")
    common = ["--model", str(model), "--data", str(data), "--device", "cpu"]
    assert main(["score", *common, "--out", "whole/predictions.csv"]) == 0
    for index in range(4):
        assert main(["score", *common, "--out", "sharded/predictions.csv", "--shard", f"{index}/4"]) == 0
    assert main(["merge-scores", "--out", "sharded/predictions.csv", "--shards", "4"]) == 0
    for name in ("predictions.csv", "predictions_leaderboard.csv", "predictions_probabilities.csv",
                 "predictions_models.json"):
        assert (workdir / "sharded" / name).read_bytes() == (workdir / "whole" / name).read_bytes(), name
    shard_rows = [sum(1 for _ in (workdir / f"sharded/predictions.shard-{i}-of-4.csv").open()) - 1 for i in range(4)]
    assert all(n > 0 for n in shard_rows) and sum(shard_rows) == sum(1 for _ in (workdir / "whole/predictions.csv").open()) - 1
    (workdir / "sharded/predictions.shard-3-of-4.csv").unlink()
    capsys.readouterr()
    assert main(["merge-scores", "--out", "sharded/predictions.csv", "--shards", "4"]) == 2
    assert "predictions.shard-3-of-4.csv is missing" in capsys.readouterr().err


def test_members_served_differently_ensemble_on_single_slices_only(workdir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A version `hemo evaluate` serves on single slices (context_weights (1.0,)) and one served with
    the 5-slice filter combine neighbours differently: with context the ensemble is one clear
    error naming both, on single slices (--context 1) it scores."""
    import torch

    from hemo_model.model.networks import HemoNet
    from hemo_model.model.spec import ModelSpec
    from hemo_model.model.storage import save_checkpoint

    filtered = _checkpoint(workdir / "filtered.pt", 1, [0.5] * 5)
    torch.manual_seed(2)
    single = workdir / "single.pt"
    save_checkpoint(single, HemoNet(head="linear"), ModelSpec(head="linear", image_size=64, context_weights=(1.0,)))
    models = ["--model", str(filtered), "--model", str(single)]
    assert main(["score", *models, "--data", "data/test", "--out", "ctx.csv", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "context weights differ" in err[0] and "--context 1" in err[0]
    assert not (workdir / "ctx.csv").exists()
    assert main(["score", *models, "--data", "data/test", "--out", "one.csv", "--device", "cpu", "--context", "1"]) == 0
    assert (workdir / "one.csv").is_file()
