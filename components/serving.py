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

from components.registry import LoadedModel
from components.settings import ScoreSettings


@dataclass
class Served:
    """Per-patient probabilities and 0/1 decisions of one model, as `hemo score` makes them."""

    model: LoadedModel
    scores: list[Any]  # hemo_model.inference.SequenceScores, one per patient
    thresholds: list[float]
    context: int

    def probabilities(self) -> list[np.ndarray]:
        return [s.probabilities for s in self.scores]

    def decisions(self) -> list[np.ndarray]:
        from hemo_model.metrics import binarize

        return [binarize(s.probabilities, self.thresholds) for s in self.scores]


def score_both(model: LoadedModel, patients: Sequence[Any], device: Any, precision: str, batch_size: int,
               progress: bool = False) -> list[Any]:
    """One forward pass per slice; each patient's scores carry per-slice logits and context logits
    (the 5-tap filter, or the model's learned context head)."""
    from hemo_model.inference import prepare_for_inference, score_sequence_model, score_sequences

    module = prepare_for_inference(model.module, device)
    if model.context == "filter":
        return score_sequences(module, patients, model.image_size, model.context_weights, device, precision,
                               batch_size, progress=progress)
    return score_sequence_model(module, patients, model.image_size, device, precision, progress=progress)


def serve(model: LoadedModel, patients: Sequence[Any], score: ScoreSettings, device: Any,
          progress: bool = False) -> Served:
    """Score ``patients`` with ``model`` as served: one forward pass per slice, context per
    `score.context` (5: the model's context, 1: single slices), the model's stored thresholds
    for that mode."""
    scores = score_both(model, patients, device, score.precision, score.batch_size, progress)
    if score.context == 1:
        scores = [s.single() for s in scores]
    return Served(model, scores, model.thresholds_for(score.context), score.context)
