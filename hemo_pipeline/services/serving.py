"""How a model is served: one code path for `hemo score` and for the gate's judgement.

A model is judged on exactly what users get from it: the same scoring mode (`score.context`),
the same stored thresholds for that mode, the same precision and batching. The gate calls
:func:`serve` with the `score` settings, so its per-slice decisions equal `hemo score`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hemo_model.inference.precision import prepare_for_inference
from hemo_model.inference.scoring import score_sequence_model, score_sequences
from hemo_model.metrics.classification import binarize
from hemo_model.model.spec import Calibration
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.registry import LoadedModel
from hemo_pipeline.services.settings import ScoreSettings


@dataclass
class Served:
    """Per-patient probabilities and 0/1 decisions of a model (or an ensemble), as `hemo score`
    makes them."""

    models: list[LoadedModel]
    scores: list[Any]  # hemo_model.inference.SequenceScores, one per patient
    thresholds: list[float]
    context: int
    calibration: Calibration | None = None
    """The version's calibration where it applies to these scores (one model, the mode it was fitted
    in); None otherwise, and ``uncalibrated_reason`` says why."""
    uncalibrated_reason: str = ""

    @property
    def model(self) -> LoadedModel:
        return self.models[0]

    def probabilities(self) -> list[np.ndarray]:
        return [s.probabilities for s in self.scores]

    def decisions(self) -> list[np.ndarray]:
        return [binarize(s.probabilities, self.thresholds) for s in self.scores]


def _compatible(models: list[LoadedModel], single_only: bool = False) -> LoadedModel:
    """An ensemble averages logits slice by slice: its members must read the same input the same way,
    and combine neighbouring slices the same way unless only single slices are served
    (``single_only``: `score.context` 1)."""
    first = models[0]
    for other in models[1:]:
        same = (other.image_size, other.input, other.context) == (first.image_size, first.input, first.context)
        if not same:
            raise UserError(f"cannot ensemble {first.label} with {other.label}: image size, input or context differ; "
                            "ensemble models trained with the same settings")
        if not single_only and list(other.context_weights) != list(first.context_weights):
            raise UserError(f"cannot ensemble {first.label} with {other.label} with context: their context weights "
                            f"differ ({first.context_weights} and {other.context_weights}; `hemo evaluate` serves a "
                            "version on single slices where its val role showed them better); score them with "
                            "--context 1 (score.context) or ensemble versions served the same way")
    return first


def score_both(model: LoadedModel | Sequence[LoadedModel], patients: Sequence[Any], device: Any, precision: str,
               batch_size: int, workers: int = 0, progress: bool = False, single_only: bool = False) -> list[Any]:
    """One forward pass per slice and model, each slice decoded once; each patient's scores carry
    per-slice logits and context logits (the 5-tap filter, or the learned context head). An
    ensemble averages its members' logits before the context, as the method's 3-model ensemble."""
    models = [model] if isinstance(model, LoadedModel) else list(model)
    first = _compatible(models, single_only)
    modules = [prepare_for_inference(m.module, device) for m in models]
    target = modules[0] if len(modules) == 1 else modules
    if first.context == "filter":
        return score_sequences(target, patients, first.image_size, first.context_weights, device, precision,
                               batch_size, workers=workers, progress=progress, channels=first.channels)
    return score_sequence_model(target, patients, first.image_size, device, precision, workers=workers,
                                progress=progress, channels=first.channels)


def serve(model: LoadedModel | Sequence[LoadedModel], patients: Sequence[Any], score: ScoreSettings, device: Any,
          workers: int = 0, progress: bool = False) -> Served:
    """Score ``patients`` as served: one forward pass per slice, context per `score.context`
    (5: the model's context, 1: single slices), the stored thresholds for that mode (an ensemble:
    the mean of its members' thresholds)."""
    models = [model] if isinstance(model, LoadedModel) else list(model)
    scores = score_both(models, patients, device, score.precision, score.batch_size, workers, progress,
                        single_only=score.context == 1)
    if score.context == 1:
        scores = [s.single() for s in scores]
    thresholds = np.mean([m.thresholds_for(score.context) for m in models], axis=0).tolist()
    calibration, reason = _calibration(models, score.context)
    return Served(models, scores, thresholds, score.context, calibration, reason)


def served_mode(model: LoadedModel, context: int) -> str:
    """"context" or "single": what the scores of `score.context` ``context`` are for this model (a
    version `hemo evaluate` serves on single slices has the one context weight 1.0)."""
    single = context == 1 or (model.context == "filter" and list(model.context_weights) == [1.0])
    return "single" if single else "context"


def _calibration(models: list[LoadedModel], context: int) -> tuple[Calibration | None, str]:
    calibration = models[0].spec.calibration
    if len(models) > 1:
        return None, "an ensemble's averaged logits were never calibrated (each member was, alone)"
    if calibration is None:
        return None, (f"{models[0].label} carries no calibration (not through `hemo evaluate` of this release, "
                      "evaluate.calibrate off, or trained on its val patients: train.refit_on_val)")
    mode = served_mode(models[0], context)
    if calibration.mode != mode:
        return None, (f"{models[0].label} was calibrated for {calibration.mode} scores, these are {mode} scores "
                      f"(score.context {context})")
    return calibration, ""
