"""The pointing game on evidence slices: which maps are checked, and what counts as a hit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hemo_model import CLASSES
from hemo_model.inference.pointing import (
    EvidenceSlice,
    delete_lesion,
    evidence_to_check,
    hit_counts,
    lesion_reliance,
    play,
    pointing_tolerance,
)

ICH, SDH = CLASSES.index("ich"), CLASSES.index("sdh")


def _lesions(n_slices: int, size: int = 16) -> np.ndarray:
    """Slices 1 and 2 show an ICH in the top-left corner; nothing else anywhere."""
    out = np.zeros((n_slices, len(CLASSES), size, size), dtype=bool)
    out[1:3, ICH, 2:5, 2:5] = True
    return out


def test_the_tolerance_is_the_pointing_games_15_px_at_224_scaled() -> None:
    assert pointing_tolerance(224) == pytest.approx(15.0)
    assert pointing_tolerance(128) == pytest.approx(15 * 128 / 224)


def test_only_flagged_evidence_slices_that_show_the_lesion_are_checked() -> None:
    lesions = _lesions(4)
    flags = np.zeros((4, len(CLASSES)), dtype=bool)
    flags[[0, 1, 2], ICH] = True  # slice 0 flagged but shows no ICH
    flags[3, SDH] = True  # flagged for SDH, no SDH anywhere
    evidence = [[0, 1, 2, 3] if c == ICH else [3, 2, 1, 0] for c in range(len(CLASSES))]
    read: list[int] = []

    def lesion(k: int) -> np.ndarray:
        read.append(k)
        return lesions[k]

    checked, off = evidence_to_check("ID_a", flags, evidence, lesion, per_class=2)
    # the top 2 flagged ICH evidence slices are 0 and 1: 0 shows no ICH, 1 is checked
    assert [(c.slice_index, c.class_index) for c in checked] == [(1, ICH)]
    assert (checked[0].lesion == lesions[1, ICH]).all()
    assert sorted(off) == [(0, ICH), (3, SDH)]
    assert sorted(set(read)) == [0, 1, 3] and len(read) == len(set(read))  # each slice's masks read once
    # unflagged classes are not looked at; per_class 3 reaches slice 2 as well
    checked, _ = evidence_to_check("ID_a", flags, evidence, lesion, per_class=3)
    assert [c.slice_index for c in checked] == [1, 2]
    with pytest.raises(ValueError, match="per_class"):
        evidence_to_check("ID_a", flags, evidence, lesion, per_class=0)


def test_a_hit_is_a_maximum_on_the_lesion_or_within_the_tolerance() -> None:
    lesion = np.zeros((32, 32), dtype=bool)
    lesion[10:14, 10:14] = True
    on, near, far = (EvidenceSlice("ID_a", k, ICH, lesion) for k in range(3))
    peaks = {0: (11, 12), 1: (16, 12), 2: (30, 30)}  # on it; 3 px below it; far away

    def saliency(item: EvidenceSlice) -> np.ndarray:
        heat = np.zeros((32, 32))
        heat[peaks[item.slice_index]] = 1.0
        return heat

    cases = play([on, near, far], saliency, tolerance_px=3.0)
    assert [(c.hit, c.exact) for c in cases] == [(True, True), (True, False), (False, False)]
    assert [c.hit for c in play([near], saliency, tolerance_px=2.0)] == [False]
    sdh = EvidenceSlice("ID_b", 0, SDH, lesion)
    table = hit_counts([*cases, *play([sdh], saliency, tolerance_px=0.0)])
    assert (table["ich"]["hits"], table["ich"]["exact_hits"], table["ich"]["maps"]) == (2, 1, 3)
    assert (table["sdh"]["hits"], table["sdh"]["maps"]) == (1, 1) and table["edh"]["maps"] == 0
    assert table["ich"]["scored_deleted"] == 0  # no deletion asked for


def test_a_flag_rests_on_the_lesion_when_deleting_the_lesion_drops_it_below_its_threshold() -> None:
    lesion = np.zeros((8, 8), dtype=bool)
    lesion[2:4, 2:4] = True
    items = [EvidenceSlice("ID_a", k, ICH, lesion) for k in range(3)]
    scores = {0: (0.9, 0.2), 1: (0.9, 0.8), 2: (0.4, 0.1)}  # rests on it; stands without it; context-only flag

    def saliency(item: EvidenceSlice) -> np.ndarray:
        heat = np.zeros((8, 8))
        heat[(3, 3) if item.slice_index != 1 else (7, 7)] = 1.0
        return heat

    thresholds = [0.5] * len(CLASSES)
    cases = play(items, saliency, 1.0, lambda item: scores[item.slice_index], thresholds)
    assert [(c.flagged_alone, c.rests_on_lesion) for c in cases] == [(True, True), (True, False), (False, False)]
    assert (cases[1].before, cases[1].after) == (0.9, 0.8)
    row = hit_counts(cases)["ich"]
    assert (row["flagged_alone"], row["rest_on_lesion"], row["hits_resting"], row["hits"]) == (2, 1, 1, 2)
    with pytest.raises(ValueError, match="come together"):
        play(items, saliency, 1.0, lambda item: scores[item.slice_index])


def test_deleting_a_lesion_fills_it_with_the_tissue_around_it_and_leaves_air_and_the_rest() -> None:
    image = torch.zeros((1, 16, 16), dtype=torch.uint8)
    image[0, 2:14, 2:14] = 100  # tissue; air around it
    image[0, 3:6, 3:6] = 200  # the rest of the slice keeps its values
    image[0, 8:10, 8:10] = 250  # the bleed
    lesion = np.zeros((16, 16), dtype=bool)
    lesion[8:10, 8:10] = True
    deleted = delete_lesion(image, lesion)
    assert (deleted[0, 7:11, 7:11] == 100).all()  # the lesion grown by a pixel, filled with the ring's median
    assert (deleted[0, 3:6, 3:6] == 200).all() and (deleted[0, :2] == 0).all()
    assert (image[0, 8:10, 8:10] == 250).all()  # the input is not changed


def test_a_bleed_against_the_skull_is_filled_with_brain_not_bone() -> None:
    """An SDH/EDH touches the skull, which saturates the brain window: the ring around it is half
    bone, and a fill from all of it would paint a bright crescent where the bleed was."""
    image = torch.zeros((1, 24, 24), dtype=torch.uint8)
    image[0, 2:22, 2:22] = 255  # skull
    image[0, 5:19, 5:19] = 90  # brain
    image[0, 5:19, 5:8] = 200  # a crescent against the inner table
    lesion = np.zeros((24, 24), dtype=bool)
    lesion[5:19, 5:8] = True
    deleted = delete_lesion(image, lesion)
    assert (deleted[0, 5:19, 5:8] == 90).all()
    # where no soft tissue surrounds it, the slice's soft tissue median; bone and air are never the fill
    all_bone = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    all_bone[0, 0, 0] = 70
    centre = np.zeros((8, 8), dtype=bool)
    centre[4, 4] = True
    assert int(delete_lesion(all_bone, centre, ring_px=1)[0, 4, 4]) == 70


def test_lesion_reliance_scores_the_slice_with_and_without_its_lesion() -> None:
    class ReadsCentre(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.full((x.shape[0], len(CLASSES)), -4.0)
            out[:, ICH] = x[:, 0, 8:10, 8:10].mean(dim=(1, 2))
            return out

    image = torch.full((1, 16, 16), 100, dtype=torch.uint8)
    image[0, 8:10, 8:10] = 250
    lesion = np.zeros((16, 16), dtype=bool)
    lesion[8:10, 8:10] = True
    before, after = lesion_reliance(ReadsCentre(), image, lesion, ICH, torch.device("cpu"))
    assert before > 0.5 > after
