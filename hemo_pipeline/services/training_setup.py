"""From settings to what a fit needs: the loss, the model spec, pretrained weights, the selection
rule, the decoded-slice cache, the validation scorer and the fit configuration (one adapter for
stage 1, refinement and learned context heads).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from hemo_model.data.cache import SliceCache
from hemo_model.inference.scoring import score_sequences, stack_scores
from hemo_model.metrics.classification import micro_f2
from hemo_model.model.losses import build_loss
from hemo_model.model.spec import ModelSpec
from hemo_model.model.storage import load_checkpoint
from hemo_model.training.config import FitConfig
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.role_capacity import RoleContents, val_can_choose
from hemo_pipeline.services.settings import (
    ModelSettings,
    SelectionSettings,
    Settings,
    TrainSettings,
)


def loss_from(train: TrainSettings) -> Any:
    """The training loss of the `train` settings (refinement uses the same one)."""
    if train.loss == "asl":
        return build_loss("asl", train.reduction, gamma_neg=train.gamma_neg, gamma_pos=train.gamma_pos,
                          clip=train.clip)
    return build_loss(train.loss, train.reduction)


def fit_roles(roles: dict[str, list], train: TrainSettings) -> dict[str, list]:
    """The roles a fit uses: as split, or with ``train.refit_on_val`` the val patients in the
    training set too (they stay the val role, so their in-sample scores are still logged)."""
    if not train.refit_on_val:
        return roles
    return {**roles, "train": [*roles["train"], *roles["val"]]}


def val_trained(roles: dict[str, list], seen: dict[str, Any] | None = None) -> bool:
    """Whether any val patient is trained on: in this fit (a refit), or by the model it continues
    (``seen``: its provenance, e.g. a stage 1 trained with train.refit_on_val under a refine without)."""
    trained = {p.patient_key for p in roles["train"]} | set((seen or {}).get("train_patients", []))
    return any(p.patient_key in trained for p in roles["val"])


REFIT_REASON = ("val patients are among the trained ones (train.refit_on_val): the configured epochs run and the "
                "last moves on")


def selection_rule(selection: SelectionSettings, roles: dict[str, list],
                   seen: dict[str, Any] | None = None) -> tuple[str, str]:
    """The rule this run uses and why (logged to MLflow and the step's JSON report). A val role
    whose patients are also trained on (a refit, here or in ``seen``) cannot choose anything,
    whatever the rule says."""
    val_patients = roles["val"]
    if val_trained(roles, seen):
        return "last", REFIT_REASON
    if selection.rule != "auto":
        return selection.rule, f"selection.rule: {selection.rule}"
    contents = RoleContents.of([p.labels for p in val_patients], [p.patient_key for p in val_patients])
    ok, why = val_can_choose(contents, selection)
    return ("best" if ok else "last"), why


def model_spec(model: ModelSettings, image_size: int) -> Any:
    """The spec of a network trained with these settings (stage 1: the 5-tap filter; refinement
    records a learned context; evaluate adds the tuned thresholds)."""
    return ModelSpec(head=model.resolved_head(), dropout=model.dropout, image_size=image_size, input=model.input)


def pretrained_path(model: ModelSettings) -> Path | None:
    if not model.pretrained:
        return None
    path = Path(model.pretrained)
    if not path.is_file():
        raise UserError(f"model.pretrained weights file {path} does not exist; give a local torchvision "
                        "resnet34 state_dict or set model.pretrained: null to train from scratch")
    return path


def read_checkpoint(path: Path, produced_by: str) -> tuple[Any, Any, dict[str, Any]]:
    """A checkpoint of ``hemo train``/``refine`` or one clear error naming the file."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; run `{produced_by}` first or pass another path")
    try:
        return load_checkpoint(path)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}); re-run `{produced_by}`") from exc


def slice_cache(settings: Settings, patients: list, image_size: int, channels: int) -> Any:
    """The decoded-slice cache of ``patients`` (built now, before any loader worker starts), or
    False when train.cache_images is off."""
    if not settings.train.cache_images:
        return False

    folder = Path(settings.data.cache_dir) if settings.data.cache_dir else None
    return SliceCache.build([path for p in patients for path in p.paths], image_size, channels, folder, progress=True)


def validator(patients: list, image_size: int, weights: tuple[float, ...], device: Any, precision: str,
              settings: Settings, channels: int = 1, batch_size: int = 32) -> Any:
    """``validate(model) -> micro-F2`` on the validation patients at threshold 0.5. The slices are
    decoded once for the whole run (cached when train.cache_images), not once per epoch."""

    cache = slice_cache(settings, patients, image_size, channels)
    workers = settings.data.loader_workers(device.type)

    def validate(model: Any) -> float:
        slice_model = getattr(model, "slice_model", model)
        was_training = slice_model.training
        slice_model.eval()
        with torch.no_grad():
            scores = score_sequences(slice_model, patients, image_size, weights, device, precision, batch_size,
                                     workers=workers, cache=cache, channels=channels)
        slice_model.train(was_training)
        probs, labels = stack_scores(scores)
        if labels is None:
            raise ValueError("validation patients must be labelled")
        return micro_f2(labels, probs)

    return validate


FIT_STAGES = ("train", "refine", "head")


def fit_config(settings: Settings, stage: str, selection: str, device_type: str) -> Any:
    """The one adapter from settings to a fit's configuration: stage 1 (`train`), the method's
    refinement (`refine`: its epochs, batch, lr and step cap; the rest as stage 1) or a learned
    context head (`head`: one sequence per step, no lr decay)."""
    train, refine = settings.train, settings.refine
    common = FitConfig(weight_decay=train.weight_decay, precision=train.precision, seed=train.seed,
                       selection=selection, ema_alpha=settings.selection.ema_alpha,
                       workers=settings.data.loader_workers(device_type), sampling=train.sampling,
                       repeat_threshold=train.repeat_threshold)
    if stage == "train":
        return dataclasses.replace(common, epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                                   step_size=train.step_size, gamma=train.gamma, max_steps=train.max_steps)
    if stage == "refine":
        return dataclasses.replace(common, epochs=refine.epochs, batch_size=refine.batch_size, lr=refine.lr,
                                   step_size=train.step_size, gamma=train.gamma, max_steps=refine.max_steps)
    if stage == "head":  # embeddings are already in memory: no loader workers, fp32, no lr decay
        return dataclasses.replace(common, epochs=refine.head_epochs, batch_size=None, lr=refine.head_lr,
                                   step_size=refine.head_epochs, gamma=1.0, workers=0, precision="fp32",
                                   sampling="uniform")
    raise ValueError(f"unknown fit stage {stage!r}; one of {FIT_STAGES}")
