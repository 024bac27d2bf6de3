"""The one adapter from settings to a fit's configuration, for every stage."""

from __future__ import annotations

import pytest

from hemo_pipeline.services.settings import Settings
from hemo_pipeline.services.training_setup import fit_config


def _settings() -> Settings:
    return Settings().with_sets(["train.epochs=7", "train.batch_size=16", "train.lr=0.002", "train.max_steps=5",
                                 "train.precision=bf16", "train.seed=3", "train.weight_decay=0.01",
                                 "refine.epochs=2", "refine.batch_size=6", "refine.lr=1e-7", "refine.max_steps=9",
                                 "refine.head_epochs=11", "refine.head_lr=0.01", "selection.ema_alpha=0.3",
                                 "data.workers=3"])


def test_stage_one_takes_the_train_section() -> None:
    config = fit_config(_settings(), "train", "ema", "cpu")
    assert (config.epochs, config.batch_size, config.lr, config.max_steps, config.precision, config.seed) == (
        7, 16, 0.002, 5, "bf16", 3)
    assert (config.selection, config.ema_alpha, config.workers, config.weight_decay) == ("ema", 0.3, 3, 0.01)


def test_refinement_takes_its_own_schedule_and_the_rest_from_stage_one() -> None:
    config = fit_config(_settings(), "refine", "last", "cpu")
    assert (config.epochs, config.batch_size, config.lr, config.max_steps) == (2, 6, 1e-7, 9)
    assert (config.precision, config.seed, config.weight_decay, config.step_size) == ("bf16", 3, 0.01, 10)


def test_a_context_head_takes_one_sequence_per_step_without_decay() -> None:
    config = fit_config(_settings(), "head", "best", "cpu")
    assert (config.epochs, config.batch_size, config.lr, config.gamma) == (11, None, 0.01, 1.0)
    assert (config.workers, config.precision, config.max_steps) == (0, "fp32", None)


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fit stage"):
        fit_config(_settings(), "pretrain", "best", "cpu")


def _patients(*keys: str, positives: int = 30) -> list:
    """Stand-ins with what the selection rule reads: a patient key and (slices, 5) labels."""
    from types import SimpleNamespace

    import numpy as np

    return [SimpleNamespace(patient_key=k, labels=np.ones((positives, 5))) for k in keys]


def test_a_refit_puts_val_into_training_and_leaves_nothing_to_choose() -> None:
    from hemo_pipeline.services.training_setup import fit_roles, selection_rule

    roles = {"train": _patients(*(f"t{i}" for i in range(40))), "val": _patients(*(f"v{i}" for i in range(40))),
             "gate": _patients("g0")}
    held_out = Settings()
    assert fit_roles(roles, held_out.train) is roles
    assert selection_rule(held_out.selection, roles)[0] == "best"  # 40 val patients, 30 positives per class
    refit = fit_roles(roles, Settings().with_sets(["train.refit_on_val=true"]).train)
    assert [p.patient_key for p in refit["train"]] == [p.patient_key for p in roles["train"] + roles["val"]]
    assert refit["val"] is roles["val"] and refit["gate"] is roles["gate"]
    rule, why = selection_rule(held_out.selection, refit)
    assert rule == "last" and "train.refit_on_val" in why
    explicit = Settings().with_sets(["selection.rule=best"]).selection  # no rule can choose on trained patients
    assert selection_rule(explicit, refit)[0] == "last" and selection_rule(explicit, roles)[0] == "best"
