"""The split: stable under additions and removals, duplicates together, checked counts."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.split import SPLITS, assign_splits, check_split_counts, split_counts, split_of


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


shas = st.lists(st.integers(0, 10**9).map(sha), min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(existing=shas, added=shas, removed_count=st.integers(0, 30), seed=st.integers(0, 99))
def test_adding_or_removing_images_never_moves_the_others(existing, added, removed_count, seed):
    before = dict(zip(existing, assign_splits([(s, None) for s in existing], seed, 0.15, 0.15)))
    kept = existing[removed_count:]
    after_items = kept + [s for s in added if s not in before]
    after = dict(
        zip(after_items, assign_splits([(s, None) for s in after_items], seed, 0.15, 0.15))
    )
    assert all(after[s] == before[s] for s in kept)


def test_fractions_and_seed():
    items = [(sha(i), None) for i in range(20000)]
    splits = assign_splits(items, seed=1, val_fraction=0.2, test_fraction=0.1)
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert share["train"] == pytest.approx(0.7, abs=0.015)
    assert share["val"] == pytest.approx(0.2, abs=0.015)
    assert share["test"] == pytest.approx(0.1, abs=0.015)
    other_seed = assign_splits(items, seed=2, val_fraction=0.2, test_fraction=0.1)
    assert sum(a != b for a, b in zip(splits, other_seed)) > 5000


def test_duplicates_share_a_split_and_a_given_test_copy_pins_them():
    dup = sha(7)
    items = [(dup, None), (sha(1), None), (dup, None), (dup, "test"), (sha(2), "test")]
    splits = assign_splits(items, seed=0, val_fraction=0.5, test_fraction=0.2, fixed_test=True)
    assert splits[0] == splits[2] == splits[3] == "test"
    assert splits[4] == "test"
    assert splits[1] in ("train", "val")  # a source with its own test set draws only these


def test_fixed_test_source_uses_val_fraction_of_the_rest():
    items = [(sha(i), None) for i in range(10000)]
    splits = assign_splits(items, seed=3, val_fraction=0.15, test_fraction=0.15, fixed_test=True)
    assert "test" not in splits
    assert splits.count("val") / len(splits) == pytest.approx(0.15, abs=0.015)
    assert split_of(sha(5), 3, 0.15, 0.15, fixed_test=True) == splits[5]


def test_split_checks():
    counts = split_counts(["a", "a", "a", "b", "b", "b"], ["train", "val", "test"] * 2)
    assert counts == {
        "a": {"train": 1, "val": 1, "test": 1},
        "b": {"train": 1, "val": 1, "test": 1},
    }
    assert check_split_counts(counts, small_class=100) == [
        "2 of 2 classes have fewer than 100 images ('a' 3, 'b' 3): expect noisy metrics for "
        "them; add images, or set data.small_class_warning to silence this"
    ]
    assert check_split_counts(counts, small_class=3) == []
    with pytest.raises(ValueError, match="at least 2 class"):
        check_split_counts({"a": counts["a"]})
    starved = split_counts(["a", "a", "a", "b", "b"], ["train", "val", "test", "train", "val"])
    with pytest.raises(ValueError, match=r"Class 'b' has 2 usable image\(s\).*none in test"):
        check_split_counts(starved)
