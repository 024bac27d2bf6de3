"""micro-F2 and friends on small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemo_model.metrics.classification import (
    classification_report,
    confusion_counts,
    micro_f2,
    positive_groups,
    tune_thresholds,
    untunable_classes,
)


def f_beta(tp: int, fp: int, fn: int, beta: float = 2.0) -> float:
    b2 = beta * beta
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)


def test_micro_f2_pools_all_cells() -> None:
    y = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    p = np.array([[0.9, 0.6, 0.1, 0.1, 0.1], [0.2, 0.7, 0.1, 0.1, 0.4], [0.1, 0.1, 0.1, 0.1, 0.1]])
    # tp: (0,ich) (1,ivh) = 2, fp: (0,ivh) = 1, fn: (1,edh) = 1
    assert micro_f2(y, p) == pytest.approx(f_beta(2, 1, 1))
    # tuned thresholds: edh at 0.3 turns the fn into a tp
    assert micro_f2(y, p, [0.5, 0.5, 0.5, 0.5, 0.3]) == pytest.approx(f_beta(3, 1, 0))


def test_report_and_confusion_counts() -> None:
    y = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.1, 0.1, 0.1], [0.6, 0.8, 0.1, 0.1, 0.1], [0.4, 0.2, 0.1, 0.1, 0.1]])
    report = classification_report(y, p)
    assert report["precision_ich"] == pytest.approx(0.5) and report["recall_ich"] == pytest.approx(0.5)
    assert report["roc_auc_ich"] == pytest.approx(0.5)  # positives 0.9, 0.4 vs negative 0.6
    assert math.isnan(report["roc_auc_sah"])  # no positives: undefined, not 0
    counts = confusion_counts(y, p)
    assert counts["ich"] == {"tn": 0, "fp": 1, "fn": 1, "tp": 1}
    assert counts["ivh"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 1}


def test_tuned_thresholds_improve_f2_on_the_data_they_saw() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 5)) < 0.15).astype(int)
    p = np.clip(0.25 * y + rng.random((200, 5)) * 0.5, 0, 1)  # positives shifted up, all below 0.75
    thresholds = tune_thresholds(y, p)
    assert all(0.05 <= t <= 0.95 for t in thresholds)
    assert micro_f2(y, p, thresholds) > micro_f2(y, p)


def test_rsna_log_loss_against_a_hand_computed_value() -> None:
    from hemo_model.metrics.classification import rsna_log_loss

    # columns ich ivh sah sdh edh; RSNA adds any = max, weight 2, others 1, sum of weights 7
    y = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    p = np.array([[0.8, 0.1, 0.1, 0.1, 0.1], [0.2, 0.0, 0.0, 0.0, 1.0]])
    # slice 1: ich -ln .8, four negatives -ln .9 each, any (p .8, y 1) 2 * -ln .8
    first = (-math.log(0.8) + 4 * -math.log(0.9) + 2 * -math.log(0.8)) / 7
    # slice 2: ich -ln .8, three zeros clip to 1e-7 -> -ln(1 - 1e-7), edh p 1 clips to 1 - 1e-7 -> -ln(1e-7),
    # any = max = 1 -> 2 * -ln(1e-7)
    second = (-math.log(0.8) + 3 * -math.log(1 - 1e-7) + 3 * -math.log(1e-7)) / 7
    assert rsna_log_loss(y, p) == pytest.approx((first + second) / 2, rel=1e-9)  # 1 - (1 - 1e-7) rounds at 1e-10
    assert rsna_log_loss(y, y.astype(float)) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)


def test_a_class_with_too_few_val_positives_keeps_the_default_threshold() -> None:
    """Three positive slices would pull the threshold to wherever they happen to score."""
    rng = np.random.default_rng(0)
    y = np.zeros((200, 5), dtype=np.int64)
    y[:60, 0] = 1
    y[:3, 4] = 1
    p = np.clip(y * 0.3 + rng.random((200, 5)) * 0.4, 0, 1)  # positives score 0.3-0.7, negatives 0-0.4
    p[:, 4] = np.where(y[:, 4] == 1, 0.93, rng.random(200) * 0.8)  # three edh slices all score 0.93
    free = tune_thresholds(y, p)
    guarded = tune_thresholds(y, p, min_positives=20)
    assert untunable_classes(y, 20) == [1, 2, 3, 4]
    assert guarded[4] == 0.5 and free[4] != 0.5  # tuned on 3 slices, it moves
    assert guarded[0] == free[0] != 0.5  # a class with 60 positives is still tuned


def test_positive_slices_from_few_patients_keep_the_default_threshold() -> None:
    """Forty positive ich slices from two patients are two observations: with a patient key per
    slice and min_positive_groups 10 the class keeps 0.5, while sdh, positive in 12 patients, is tuned."""
    rng = np.random.default_rng(1)
    keys = np.repeat([f"p{i:02d}" for i in range(20)], 20)  # 20 patients x 20 slices
    y = np.zeros((400, 5), dtype=np.int64)
    y[:40, 0] = 1  # ich: patients p00 and p01 only
    for patient in range(12):  # sdh: 5 slices in each of 12 patients
        y[patient * 20:patient * 20 + 5, 3] = 1
    p = np.clip(y * 0.35 + rng.random((400, 5)) * 0.4, 0, 1)  # positives 0.35-0.75: F2 wants a low threshold
    assert positive_groups(y, keys).tolist() == [2, 0, 0, 12, 0]
    free = tune_thresholds(y, p, min_positives=20)
    guarded = tune_thresholds(y, p, min_positives=20, groups=keys, min_positive_groups=10)
    assert free[0] != 0.5 and guarded[0] == 0.5  # by slices ich could be tuned; by patients it cannot
    assert guarded[3] == free[3] != 0.5
    assert untunable_classes(y, 20, keys, 10) == [0, 1, 2, 4]
    assert untunable_classes(y, 20) == [1, 2, 4]  # without keys, slices alone decide
    with pytest.raises(ValueError, match="399 group keys for 400 slices"):
        positive_groups(y, keys[:-1])
    with pytest.raises(ValueError, match="min_positive_groups needs the groups"):
        tune_thresholds(y, p, min_positive_groups=10)  # a patient floor without patients must not pass silently
