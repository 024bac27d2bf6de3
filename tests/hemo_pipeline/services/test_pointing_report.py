"""The pointing game on gate exams: a network that reads the lesion is scored as pointing at it,
one that reads somewhere else is not, and the report says why it was not played."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn

from hemo_model import CLASSES
from hemo_model.data.lesion_masks import MASKS_DIR, mask_name, write_lesion_mask
from hemo_pipeline.services.pointing_report import (
    pointing_figure,
    pointing_lines,
    pointing_markdown,
    pointing_metrics,
    pointing_report,
)

SIZE = 32
ICH = CLASSES.index("ich")
LESION = (slice(20, 26), slice(20, 26))  # bottom right
DECOY = (slice(2, 8), slice(22, 28))  # top right: bright, not a bleed


class ReadsRegion(nn.Module):
    """ICH logit from the mean brightness of one region of the slice (model-ready input)."""

    def __init__(self, region: tuple[slice, slice]) -> None:
        super().__init__()
        self.region = region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], len(CLASSES)), -5.0)
        logits[:, ICH] = x[:, 0, self.region[0], self.region[1]].mean(dim=(1, 2)) - 1.0
        return logits


def _patient(root: Path) -> SimpleNamespace:
    """One gate exam of 3 slices: tissue at 100, a decoy at 240 on every slice, a bleed at 250 on slice 1."""
    folder = root / "train" / "ID_p1"
    folder.mkdir(parents=True)
    paths = []
    for k in range(3):
        pixels = np.full((SIZE, SIZE), 100, np.uint8)
        pixels[DECOY] = 240
        if k == 1:
            pixels[LESION] = 250
        Image.fromarray(pixels, mode="L").save(folder / f"p1_{k}.png")  # lossless: the test is about geometry
        paths.append(folder / f"p1_{k}.png")
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[LESION] = True
    write_lesion_mask(root / MASKS_DIR / "ID_p1" / mask_name("p1_1.png"), {"ich": lesion})
    logits = np.full((3, len(CLASSES)), -5.0)
    logits[1, ICH] = 2.0  # flagged on the lesion's slice only
    return SimpleNamespace(patient=SimpleNamespace(dirname="ID_p1", paths=paths), logits=logits, slice_logits=logits)


def _report(root: Path, model: nn.Module, per_class: int = 1) -> tuple[dict, list]:
    loaded = SimpleNamespace(module=model, image_size=SIZE, channels=1)
    return pointing_report(loaded, [_patient(root)], True, [0.5] * len(CLASSES), [0.5] * len(CLASSES), None, root,
                           per_class, torch.device("cpu"), progress=False)


def test_a_network_that_reads_the_lesion_points_at_it(tmp_path: Path) -> None:
    report, examples = _report(tmp_path, ReadsRegion(LESION))
    row = report["classes"]["ich"]
    assert report["status"] == "played" and report["outlined_gate_patients"] == 1
    assert (row["maps"], row["hits"], row["exact_hits"], row["off_lesion"]) == (1, 1, 1, 0)
    # the flag rests on the lesion: deleting it drops the ICH probability below the threshold
    assert (row["flagged_alone"], row["rest_on_lesion"], row["hits_resting"]) == (1, 1, 1)
    assert row["mean_probability_before"] > 0.5 > row["mean_probability_deleted"]
    assert pointing_metrics(report) == {"pointing_hit_rate_ich": 1.0, "pointing_maps_ich": 1.0,
                                        "pointing_rest_on_lesion_rate_ich": 1.0, "pointing_hit_rate_resting_ich": 1.0}
    assert len(examples) == 1 and examples[0][2].hit and examples[0][2].rests_on_lesion and examples[0][0].slice_index == 1
    gate = [SimpleNamespace(patient=SimpleNamespace(dirname="ID_p1", paths=sorted((tmp_path / "train/ID_p1").iterdir())))]
    figure = pointing_figure(SimpleNamespace(image_size=SIZE, channels=1), gate, examples)
    assert len(figure.axes) == 1 and figure.axes[0].get_title().startswith("ich: hit; the flag rests on the lesion")
    assert any(line.startswith("  ich: 1/1 = 1.000 [0.025, 1.000] (1 on the lesion itself); flags resting on the "
                               "lesion 1/1") for line in pointing_lines(report))
    assert any(line.startswith("| ich | 1 | 1/1 = 1.000 [0.025, 1.000] | 1 | 1/1 = 1.000") for line in
               pointing_markdown(report))


def test_a_network_that_reads_something_else_misses(tmp_path: Path) -> None:
    report, _ = _report(tmp_path, ReadsRegion(DECOY))
    row = report["classes"]["ich"]
    assert (row["maps"], row["hits"]) == (1, 0)
    assert pointing_metrics(report)["pointing_hit_rate_ich"] == 0.0
    # and the report says why: its flag stands with the lesion deleted, it rests on the decoy
    assert (row["flagged_alone"], row["rest_on_lesion"]) == (1, 0)
    assert row["mean_probability_deleted"] == row["mean_probability_before"]


def test_the_game_says_why_it_was_not_played(tmp_path: Path) -> None:
    report, examples = _report(tmp_path, ReadsRegion(LESION), per_class=0)
    assert report["status"].startswith("off") and examples == []
    assert pointing_metrics(report) == {}
    other = tmp_path / "unoutlined"
    other.mkdir()
    patient = _patient(other)
    for mask in (other / MASKS_DIR / "ID_p1").iterdir():
        mask.unlink()
    (other / MASKS_DIR / "ID_p1").rmdir()
    loaded = SimpleNamespace(module=ReadsRegion(LESION), image_size=SIZE, channels=1)
    report, _ = pointing_report(loaded, [patient], True, [0.5] * len(CLASSES), [0.5] * len(CLASSES), None, other,
                                1, torch.device("cpu"), progress=False)
    assert "no gate patient has outlined lesions" in report["status"]
    assert pointing_lines(report) == [f"pointing game: {report['status']}"]
    assert "Not played: no gate patient" in "\n".join(pointing_markdown(report))


def test_slices_are_picked_in_the_served_mode_and_judged_at_the_single_slice_thresholds(tmp_path: Path) -> None:
    """Context logits flag the lesion's slice, single-slice logits another one: the served mode
    decides which slice is checked; the deletion check uses the single-slice thresholds."""
    patient = _patient(tmp_path)
    single = np.full((3, len(CLASSES)), -5.0)
    single[2, ICH] = 2.0  # alone, the network flags slice 2, which shows no ICH
    patient.slice_logits = single
    loaded = SimpleNamespace(module=ReadsRegion(LESION), image_size=SIZE, channels=1)
    served = [0.5] * len(CLASSES)
    strict = [0.99] * len(CLASSES)  # no single-slice flag stands at 0.99
    report, _ = pointing_report(loaded, [patient], True, served, strict, None, tmp_path, 1, torch.device("cpu"),
                                progress=False)
    row = report["classes"]["ich"]
    assert (row["maps"], row["off_lesion"], row["flagged_alone"], row["rest_on_lesion"]) == (1, 0, 0, 0)
    report, _ = pointing_report(loaded, [patient], False, served, served, None, tmp_path, 1, torch.device("cpu"),
                                progress=False)
    row = report["classes"]["ich"]
    assert (row["maps"], row["off_lesion"]) == (0, 1)
    assert "  ich: no map: none of its 1 flagged evidence slice(s) shows a ich lesion" in pointing_lines(report)
    assert any(line.startswith("| ich | 0 | n/a | 0 | n/a | n/a | n/a | 1 |") for line in pointing_markdown(report))
