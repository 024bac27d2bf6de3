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


def serve(model: LoadedModel, patients: Sequence[Any], score: ScoreSettings, device: Any,
          progress: bool = False) -> Served:
    """Score ``patients`` with ``model`` as served: one forward pass per slice, the context filter
    of `score.context`, the model's stored thresholds for that mode."""
    from hemo_model.inference import prepare_for_inference, score_sequences

    module = prepare_for_inference(model.module, device)
    scores = score_sequences(module, patients, model.image_size, model.weights_for(score.context), device,
                             score.precision, score.batch_size, progress=progress)
    return Served(model, scores, model.thresholds_for(score.context), score.context)
