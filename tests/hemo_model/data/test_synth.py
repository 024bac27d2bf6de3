"""The synthetic CT generator: layout, determinism, label/lesion consistency, realism, rates."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data.layout import parse_slice_name
from hemo_model.data.synth import (
    ANSWER_KEY_NAME,
    BRAIN_WINDOW,
    HU_BONE,
    MIN_VISIBLE_AREA,
    generate_dataset,
    render_slice,
    sample_patient,
    window,
)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_matches_dlcv(tiny_data: Path) -> None:
    with (tiny_data / "train.csv").open() as handle:
        reader = csv.reader(handle)
        assert next(reader) == list(LABEL_COLUMNS)
        rows = list(reader)
    patients = {r[0] for r in rows}
    assert len(patients) == 4
    for dirname, ident, *labels in rows:
        parsed = parse_slice_name(ident)
        assert parsed is not None and dirname == f"ID_{parsed.hash}"
        assert set(labels) <= {"0", "1"}
        image = Image.open(tiny_data / "train" / dirname / ident)
        assert image.mode == "L" and image.size == (64, 64)
    for dirname in patients:
        n = len(list((tiny_data / "train" / dirname).iterdir()))
        assert 22 <= n <= 40
    assert len(list((tiny_data / "test").iterdir())) == 2
    assert (tiny_data / ANSWER_KEY_NAME).is_file()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(a, 2, 1, image_size=48, seed=1)
    generate_dataset(b, 2, 1, image_size=48, seed=1)
    generate_dataset(c, 2, 1, image_size=48, seed=2)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)


def test_patient_does_not_depend_on_how_many_are_generated() -> None:
    assert sample_patient(5, "train", 3) == sample_patient(5, "train", 3)
    assert sample_patient(5, "train", 3).hash != sample_patient(5, "test", 3).hash


def test_window_maps_brain_window_to_8_bit() -> None:
    centre, width = BRAIN_WINDOW
    hu = np.array([-1000.0, centre - width / 2, centre, centre + width / 2, HU_BONE])
    assert window(hu).tolist() == [0, 0, 128, 255, 255]


def _patient_with(kind: str):
    for index in range(200):
        patient = sample_patient(11, "train", index)
        if any(lesion.kind == kind for lesion in patient.lesions):
            return patient
    pytest.fail(f"no patient with {kind} in 200 draws")


@pytest.mark.parametrize("kind", CLASSES)
def test_labels_follow_drawn_lesions(kind: str) -> None:
    """A slice is positive exactly where the lesion's visible area reaches the threshold, the
    blood is at blood intensity, and a lesion spans contiguous slices."""
    patient = _patient_with(kind)
    size = 128
    positive = []
    for k in range(patient.n_slices):
        render = render_slice(patient, k, size)
        area = render.masks[kind].sum() * (2.0 / size) ** 2
        assert render.labels[kind] == int(area >= MIN_VISIBLE_AREA)
        if render.labels[kind]:
            positive.append(k)
            blood = render.hu[render.masks[kind]]
            assert 40.0 < float(np.median(blood)) < 95.0  # fresh blood ~50-90 HU (+ noise)
    assert positive, f"{kind} lesion never visible"
    assert positive == list(range(positive[0], positive[-1] + 1)), "lesion must span contiguous slices"


def test_lesion_grows_then_shrinks() -> None:
    patient = _patient_with("ich")
    lesion = next(lesion for lesion in patient.lesions if lesion.kind == "ich")
    areas = [render_slice(patient, k, 96).masks["ich"].sum() for k in range(patient.n_slices)]
    peak = int(np.argmax(areas))
    assert abs(peak - lesion.centre) <= 1
    assert all(areas[k] <= areas[k + 1] for k in range(0, peak) if areas[k] > 0)


def test_anatomy_is_ct_like() -> None:
    """Bone in the skull, CSF in the ventricles of middle slices, head smaller at the ends."""
    patient = sample_patient(3, "train", 0)
    middle = render_slice(patient, patient.n_slices // 2 + 1, 128)
    top = render_slice(patient, patient.n_slices - 1, 128)
    head_mid = (middle.hu > -200).sum()
    head_top = (top.hu > -200).sum()
    assert head_top < 0.6 * head_mid
    assert (middle.hu > 500).sum() > 0  # skull
    brain = (middle.hu > 15) & (middle.hu < 50)
    assert brain.sum() > 0.2 * head_mid
    assert ((middle.hu > -20) & (middle.hu < 15)).sum() > 50  # CSF: ventricles and sulci


def test_class_rates_close_to_the_original() -> None:
    """Pooled over 3 seeds x 80 patients, per-slice positive rates are near the original data."""
    target = {"ich": 0.117, "ivh": 0.082, "sah": 0.116, "sdh": 0.165, "edh": 0.040}
    counts = dict.fromkeys(CLASSES, 0)
    total = 0
    for seed, index in ((seed, index) for seed in (1, 2, 3) for index in range(80)):
        patient = sample_patient(seed, "train", index)
        for k in range(patient.n_slices):
            labels = render_slice(patient, k, 48).labels
            for c in CLASSES:
                counts[c] += labels[c]
            total += 1
    for c in CLASSES:
        assert abs(counts[c] / total - target[c]) < 0.03, (c, counts[c] / total)
    assert counts["edh"] < min(counts[c] for c in ("ich", "ivh", "sah", "sdh"))  # EDH is the rare one


def test_the_second_scanner_shifts_every_pixel_by_its_offset_and_nothing_else() -> None:
    """The scanner is a mild calibration drift: the same patient on Phantom-B reads 4 HU higher
    everywhere, with the same lesions and labels."""
    import dataclasses

    from hemo_model.data.subgroups import PHANTOM_SCANNERS

    patient = sample_patient(0, "train", 3)
    on = {name: render_slice(dataclasses.replace(patient, scanner=name), patient.n_slices // 2, 48)
          for name in PHANTOM_SCANNERS}
    shift = on["Phantom-B"].hu - on["Phantom-A"].hu
    assert np.allclose(shift, PHANTOM_SCANNERS["Phantom-B"] - PHANTOM_SCANNERS["Phantom-A"], atol=1e-3)
    assert on["Phantom-B"].labels == on["Phantom-A"].labels
    assert all((on["Phantom-B"].masks[c] == on["Phantom-A"].masks[c]).all() for c in CLASSES)


def test_subgroups_file_names_every_folder_with_its_scanner(tiny_data: Path) -> None:
    from hemo_model.data.subgroups import read_subgroups

    groups = read_subgroups(tiny_data)
    folders = {d.name for split in ("train", "test") for d in (tiny_data / split).iterdir()}
    assert set(groups) == folders
    drawn = {p.dirname: p.scanner for split, n in (("train", 4), ("test", 2))
             for p in (sample_patient(7, split, i) for i in range(n))}  # conftest TINY: seed 7, 4 + 2 patients
    assert {d: g["scanner"] for d, g in groups.items()} == drawn
    scanners = [sample_patient(seed=0, split="train", index=i).scanner for i in range(40)]
    assert {"Phantom-A", "Phantom-B"} <= set(scanners)  # both scanners in any data set of some size
    assert 10 <= scanners.count("Phantom-B") <= 30


def test_masks_outline_each_labelled_lesion_of_the_labelled_split_only(tiny_data: Path) -> None:
    from hemo_model.data.lesion_masks import MASKS_DIR, outlined_patients, read_lesion_mask

    with (tiny_data / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    positive = [r for r in rows if any(int(r[c]) for c in CLASSES)]
    assert positive, "the tiny set has lesions"
    files = {(p.parent.name, p.name) for p in (tiny_data / MASKS_DIR).rglob("*.png")}
    assert files == {(r["dirname"], r["ID"].replace(".jpg", ".png")) for r in positive}  # one per positive slice
    test_folders = {d.name for d in (tiny_data / "test").iterdir()}
    assert not outlined_patients(tiny_data) & test_folders  # test labels stay with the answer key
    for row in rows:
        planes = read_lesion_mask(tiny_data, row["dirname"], row["ID"], 64)
        for index, name in enumerate(CLASSES):
            assert planes[index].any() == bool(int(row[name])), (row["ID"], name)
    # the outline is where the generator drew the lesion
    row = positive[0]
    k = parse_slice_name(row["ID"]).k
    patients = [sample_patient(7, "train", i) for i in range(4)]  # conftest TINY: seed 7
    patient = next(p for p in patients if p.dirname == row["dirname"])
    drawn = render_slice(patient, k, 64)
    planes = read_lesion_mask(tiny_data, row["dirname"], row["ID"], 64)
    for c, name in enumerate(CLASSES):
        if int(row[name]):
            assert (planes[c] == drawn.masks[name]).all()
