"""Whether a model is served with its 5-slice context or on single slices, decided once by
`hemo evaluate` on the `val` role and stored in the model spec.

The method's 5-tap filter helps on the method's data and on the demo, but not on every data set
(issue 19 saw 0.4724 with context against 0.4840 single slice). Where `val` can tell (the
selection rule's test: enough patients and positive slices per class), each mode is scored at its
own tuned thresholds and single slices replace the filter only when they score higher; ties and
val roles that may not choose (the selection rule's `last`: too small, set so, or trained on) keep
the method's filter. A learned context head (conv1d, bigru) is kept as refinement fitted it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContextChoice:
    """What serving uses, and why (written to evaluate.json, MLflow and the step's line)."""

    use_context: bool
    reason: str


def choose_context(context: str, can_tell: bool, why: str, val_f2_context: float,
                   val_f2_single: float) -> ContextChoice:
    """``context``: the model's (filter, conv1d, bigru); ``can_tell``/``why``: whether val may
    choose and why (:func:`~hemo_pipeline.services.training_setup.selection_rule` other than
    `last`); the val micro-F2 of each mode at its tuned thresholds."""
    if context != "filter":
        return ContextChoice(True, f"learned {context} context head, kept as `hemo refine` fitted it")
    if not can_tell:
        return ContextChoice(True, f"{why}: the method's 5-slice filter is kept untested")
    if val_f2_single > val_f2_context:
        return ContextChoice(False, f"single slices scored higher on val ({val_f2_single:.4f} > "
                                    f"{val_f2_context:.4f} with the 5-slice filter): served without context")
    return ContextChoice(True, f"the 5-slice filter scored at least as high on val ({val_f2_context:.4f} >= "
                               f"{val_f2_single:.4f} single slice)")
