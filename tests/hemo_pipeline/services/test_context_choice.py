"""The serving-mode decision: the method's filter unless a val role that can tell shows single
slices better; learned heads are kept."""

from __future__ import annotations

from hemo_pipeline.services.context_choice import choose_context


def test_single_slices_replace_the_filter_only_where_val_can_tell_they_are_better() -> None:
    better_single = choose_context("filter", True, "val can", val_f2_context=0.60, val_f2_single=0.62)
    assert not better_single.use_context and "0.6200 > 0.6000" in better_single.reason
    assert choose_context("filter", True, "val can", 0.62, 0.60).use_context
    assert choose_context("filter", True, "val can", 0.61, 0.61).use_context  # a tie keeps the method
    untold = choose_context("filter", False, "val role too small to choose on (2 patients < 30)", 0.10, 0.90)
    assert untold.use_context and untold.reason.startswith("val role too small to choose on")


def test_a_learned_context_head_is_kept_whatever_val_says() -> None:
    for head in ("conv1d", "bigru"):
        choice = choose_context(head, True, "val can", 0.10, 0.90)
        assert choice.use_context and head in choice.reason
