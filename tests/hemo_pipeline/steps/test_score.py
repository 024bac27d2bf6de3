"""`hemo score` and model loading: bad input gives one clear error and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_pipeline.cli import main
from hemo_pipeline.services.score_files import load_saliency


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


def _calibration(**changes: object):  # noqa: ANN202 - a Calibration
    from hemo_model.model.spec import Calibration

    values: dict[str, object] = dict(
        mode="context", slice_temperatures=(2.0, 1.5, 1.0, 0.5, 3.0), slice_shifts=(1.0, -0.5, 0.0, 2.0, 0.5),
        exam_rule="max", exam_temperatures=(1.2, 1.0, 1.0, 1.0, 1.0, 1.0), exam_shifts=(0.3, 0.0, 0.0, 0.0, 0.0, 0.0),
        low_risk_below=0.2, high_risk_above=0.6, low_risk_target=0.05, high_risk_target=0.1, n_slices=100,
        n_exams=40, n_positive_exams=20, fitted_on_trained_patients=False)
    values.update(changes)
    return Calibration(**values)  # type: ignore[arg-type]


def _calibrated_checkpoint(path: Path, seed: int, calibration: object) -> Path:
    import torch

    from hemo_model.model.networks import HemoNet
    from hemo_model.model.spec import ModelSpec
    from hemo_model.model.storage import save_checkpoint

    torch.manual_seed(seed)
    spec = ModelSpec(head="linear", image_size=64, thresholds=[0.4, 0.5, 0.6, 0.5, 0.3], calibration=calibration)
    save_checkpoint(path, HemoNet(head="linear"), spec)
    return path


def _exams(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with path.open() as handle:
        return {row["dirname"]: row for row in csv.DictReader(handle)}


def test_calibration_in_the_spec_moves_probabilities_not_decisions(workdir: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The version's calibration is applied to every probability `hemo score` writes (slices and
    exams, hand-computed here from the raw scores of the same weights), the 0/1 flags stay those of
    the raw probabilities at the stored thresholds, and each exam's bin follows the stored cut-offs."""
    import json

    import numpy as np

    calibration = _calibration()
    _calibrated_checkpoint(workdir / "raw.pt", 5, None)
    _calibrated_checkpoint(workdir / "cal.pt", 5, calibration)
    for name in ("raw", "cal"):
        assert main(["score", "--model", f"{name}.pt", "--data", "data/test", "--out", f"{name}/p.csv",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(calibrated, triage cut-offs of the version)" in out and "carries no calibration" in out
    assert (workdir / "raw/p.csv").read_bytes() == (workdir / "cal/p.csv").read_bytes()  # the same decisions
    raw, cal = _probabilities(workdir / "raw/p_probabilities.csv"), _probabilities(workdir / "cal/p_probabilities.csv")
    t, s = np.array(calibration.slice_temperatures), np.array(calibration.slice_shifts)

    def logit(p: np.ndarray) -> np.ndarray:
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(q / (1 - q))

    usable = 0
    for slice_id, p in raw.items():
        p = np.array(p)
        ok = (p > 1e-3) & (p < 1 - 1e-3)  # the CSV rounds to 6 decimals
        expected = 1 / (1 + np.exp(-(logit(p) - s) / t))
        assert np.allclose(np.array(cal[slice_id])[ok], expected[ok], atol=5e-4), slice_id
        usable += int(ok.sum())
    assert usable > 50
    models = json.loads((workdir / "cal/p_models.json").read_text())
    assert models["calibrated"] is True and models["triage"]["low_risk_below"] == 0.2
    decided = {row.split(",")[1]: [int(x) for x in row.strip().split(",")[2:]]
               for row in (workdir / "cal/p.csv").read_text().splitlines()[1:]}
    for slice_id, p in cal.items():  # calibrated probabilities at the calibrated thresholds: the same flags
        margin = np.abs(np.array(p) - np.array(models["thresholds_calibrated"])) > 1e-5
        assert (((np.array(p) >= models["thresholds_calibrated"]) == np.array(decided[slice_id], bool))[margin]).all()

    raw_exams, cal_exams = _exams(workdir / "raw/p_exams.csv"), _exams(workdir / "cal/p_exams.csv")
    patients = sorted(p.name for p in (workdir / "data/test").iterdir())
    assert sorted(cal_exams) == patients and sorted(raw_exams) == patients
    for dirname, row in cal_exams.items():
        slices = {k: v for k, v in cal.items() if k.startswith(dirname[3:] + "_")}
        assert int(row["slices"]) == len(slices)
        per_class = np.array(list(slices.values())).max(axis=0)
        exam_t, exam_s = np.array(calibration.exam_temperatures), np.array(calibration.exam_shifts)
        expected = 1 / (1 + np.exp(-(logit(np.r_[per_class.max(), per_class]) - exam_s) / exam_t))
        got = np.array([float(row[c]) for c in ("any", "ich", "ivh", "sah", "sdh", "edh")])
        assert np.allclose(got, expected, atol=2e-3), dirname
        p_any = got[0]
        assert row["triage"] == ("low_risk" if p_any < 0.2 else "high_risk" if p_any > 0.6 else "defer")
        assert row["calibrated"] == "1" and raw_exams[dirname]["triage"] == "defer"
        assert raw_exams[dirname]["calibrated"] == "0"
        top = row["evidence_any"].split(";")
        assert len(top) == min(3, len(slices)) and all((workdir / "data/test" / dirname / name).is_file() for name in top)
        assert max(slices[top[0]]) == max(max(v) for v in slices.values())  # the most suspicious slice first


def test_calibration_is_not_applied_where_it_was_not_fitted(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A calibration fitted on 5-slice context scores does not calibrate single-slice scores, nor an
    ensemble's averaged logits: both score uncalibrated, every exam deferred, and the line says why."""
    import json

    a = _calibrated_checkpoint(workdir / "a.pt", 1, _calibration())
    b = _calibrated_checkpoint(workdir / "b.pt", 2, _calibration())
    assert main(["score", "--model", str(a), "--data", "data/test", "--out", "single/p.csv", "--device", "cpu",
                 "--context", "1"]) == 0
    assert "calibrated for context scores, these are single scores (score.context 1)" in capsys.readouterr().out
    assert main(["score", "--model", str(a), "--model", str(b), "--data", "data/test", "--out", "ens/p.csv",
                 "--device", "cpu"]) == 0
    assert "an ensemble's averaged logits were never calibrated" in capsys.readouterr().out
    for folder in ("single", "ens"):
        assert json.loads((workdir / folder / "p_models.json").read_text())["calibrated"] is False
        assert {row["triage"] for row in _exams(workdir / folder / "p_exams.csv").values()} == {"defer"}


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
                 "predictions_models.json", "exams.csv"):
        assert (workdir / "sharded" / name).read_bytes() == (workdir / "whole" / name).read_bytes(), name
    shard_rows = [sum(1 for _ in (workdir / f"sharded/predictions.shard-{i}-of-4.csv").open()) - 1 for i in range(4)]
    assert all(n > 0 for n in shard_rows) and sum(shard_rows) == sum(1 for _ in (workdir / "whole/predictions.csv").open()) - 1
    stale = workdir / "sharded/exams.shard-1-of-4.csv"  # an exam shard of another run: refused, not merged
    good = stale.read_text()
    header, *rows = good.splitlines()
    renamed = [",".join([f"ID_ff{i:08d}", *row.split(",")[1:]]) for i, row in enumerate(rows)]
    stale.write_text("\n".join([header, *renamed]) + "\n")
    capsys.readouterr()
    assert main(["merge-scores", "--out", "sharded/predictions.csv", "--shards", "4"]) == 2
    assert "do not match the slice shards" in capsys.readouterr().err
    stale.write_text(good)
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


def test_overlays_are_drawn_for_each_flagged_type_on_its_top_evidence_slice(workdir: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A threshold of 0 flags SAH in every exam, thresholds of 1 flag only what saturates (an
    untrained network saturates some logits): exactly the flagged (exam, type) pairs are drawn, as
    PNGs named by the pipeline's exam folder and type."""
    import csv

    from PIL import Image

    model = _checkpoint(workdir / "m.pt", 6, [1.0, 1.0, 0.0, 1.0, 1.0])
    assert main(["score", "--model", str(model), "--data", "data/test", "--out", "p.csv", "--device", "cpu",
                 "--overlays", "overlays"]) == 0
    with (workdir / "p.csv").open() as handle:
        flagged = {f"{row['dirname']}_{c}.png" for row in csv.DictReader(handle)
                   for c in ("ich", "ivh", "sah", "sdh", "edh") if row[c] == "1"}
    drawn = sorted(p.name for p in (workdir / "overlays").glob("*.png"))
    patients = sorted(p.name for p in (workdir / "data/test").iterdir())
    assert set(drawn) == flagged and {f"{d}_sah.png" for d in patients} <= flagged
    # each map itself beside its PNG, for `hemo report`: the slice it explains, at the model's size
    maps = {p.name.removesuffix(".saliency.npz") for p in (workdir / "overlays").glob("*.saliency.npz")}
    assert maps == {name.removesuffix(".png") for name in drawn}
    assert {p.suffix for p in (workdir / "overlays").iterdir()} == {".png", ".npz"}
    saliency, slice_name = load_saliency(next((workdir / "overlays").glob("*.saliency.npz")))
    assert saliency.shape == (64, 64) and slice_name.endswith(".jpg")
    assert len(flagged) < 5 * len(patients)  # not everything: the test can tell flagged from not
    with Image.open(workdir / "overlays" / drawn[0]) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert f"score: {len(drawn)} saliency overlays (occlusion sensitivity) -> overlays" in capsys.readouterr().out


def test_the_exams_file_follows_the_predictions_name_and_never_overwrites_them(workdir: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = _checkpoint(workdir / "m.pt", 7, [0.5] * 5)
    common = ["--model", str(model), "--data", "data/test", "--device", "cpu"]
    assert main(["score", *common, "--out", "out/run_a.csv"]) == 0
    assert (workdir / "out/run_a_exams.csv").is_file() and not (workdir / "out/exams.csv").exists()
    capsys.readouterr()
    assert main(["score", *common, "--out", "out/run_b.csv", "--exams", "out/run_b_probabilities.csv"]) == 2
    assert "--exams out/run_b_probabilities.csv is one of the files --out out/run_b.csv writes" in _error(capsys)
    assert not (workdir / "out/run_b.csv").exists()
