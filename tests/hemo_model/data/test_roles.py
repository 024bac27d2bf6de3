"""Patient roles: a pure function of (salt, patient id), stable when the patient set changes."""

from __future__ import annotations

import random

import pytest

from hemo_model.data.roles import GATE, ROLES, TRAIN, VAL, RoleSpec, assign_roles, bucket, patients_digest, role_counts

SPEC = RoleSpec(salt="hemo-roles-v1", val_fraction=0.0879, gate_fraction=0.1)


def _ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"ID_{rng.getrandbits(40):010x}" for _ in range(n)]


def test_existing_patients_keep_their_role_when_patients_are_added_removed_and_reordered() -> None:
    before_ids = _ids(1535, seed=1)
    before = assign_roles(before_ids, SPEC)
    rng = random.Random(2)
    kept = rng.sample(before_ids, len(before_ids) - 7)  # a few patients withdrawn
    grown = kept + _ids(307, seed=3)  # 20% new patients
    rng.shuffle(grown)
    after = assign_roles(grown, SPEC)
    moved = [pid for pid in kept if after[pid] != before[pid]]
    assert moved == []
    # ... whereas a seeded permutation over the sorted list (the old split) moves most of val.
    old_val = _permutation_val(before_ids)
    new_val = _permutation_val(grown)
    assert len(new_val - old_val - set(grown[len(kept):])) > 50


def _permutation_val(ids: list[str]) -> set[str]:
    import numpy as np

    ordered = sorted(ids)
    order = np.random.default_rng(0).permutation(len(ordered))
    return {ordered[i] for i in order[: round(0.0879 * len(ordered))]}


def test_roles_do_not_depend_on_input_order() -> None:
    ids = _ids(200, seed=4)
    shuffled = ids[:]
    random.Random(5).shuffle(shuffled)
    assert assign_roles(ids, SPEC) == assign_roles(shuffled, SPEC) == assign_roles(reversed(ids), SPEC)


def test_fractions_are_met_on_a_large_set() -> None:
    counts = role_counts(assign_roles(_ids(20000, seed=6), SPEC))
    assert abs(counts[GATE] / 20000 - 0.1) < 0.01
    assert abs(counts[VAL] / 20000 - 0.0879) < 0.01
    assert counts[TRAIN] == 20000 - counts[GATE] - counts[VAL]


def test_growing_val_only_takes_from_train_and_gate_stays() -> None:
    ids = _ids(2000, seed=7)
    small = assign_roles(ids, SPEC)
    larger = assign_roles(ids, RoleSpec(SPEC.salt, 0.2, SPEC.gate_fraction))
    assert all(larger[i] == GATE for i in ids if small[i] == GATE)
    assert all(small[i] == TRAIN for i in ids if larger[i] == VAL and small[i] != VAL)


def test_salt_reassigns() -> None:
    ids = _ids(2000, seed=8)
    a, b = assign_roles(ids, SPEC), assign_roles(ids, RoleSpec("other", SPEC.val_fraction, SPEC.gate_fraction))
    assert sum(a[i] != b[i] for i in ids) > 200
    assert 0.0 <= bucket("ID_x", "s") < 1.0 and bucket("ID_x", "s") == bucket("ID_x", "s")


def test_digest_ignores_order_and_duplicates() -> None:
    assert patients_digest(["b", "a", "a"]) == patients_digest(["a", "b"]) != patients_digest(["a"])


def test_bad_fractions() -> None:
    with pytest.raises(ValueError):
        RoleSpec("s", 0.6, 0.5)
    assert set(ROLES) == {TRAIN, VAL, GATE}
