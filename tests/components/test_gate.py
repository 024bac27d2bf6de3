"""The promotion rule on its own."""

from __future__ import annotations

from components.gate import decide


def test_first_model_needs_only_the_floor() -> None:
    assert decide(0.5, None, 0.01, 0.3)[0] is True
    promoted, reason = decide(0.2, None, 0.01, 0.3)
    assert promoted is False and "below the floor" in reason


def test_challenger_must_beat_champion_by_min_improvement() -> None:
    assert decide(0.62, 0.60, 0.01, 0.3)[0] is True
    assert decide(0.605, 0.60, 0.01, 0.3)[0] is False
    assert decide(0.60, 0.60, 0.0, 0.3)[0] is False  # equal is not better
    assert decide(0.55, 0.60, 0.0, 0.3)[0] is False
    assert decide(0.9, 0.1, 0.0, 0.95)[0] is False  # floor applies to every challenger
