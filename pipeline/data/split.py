"""The split: each image's split is a function of its own content and the seed, nothing else.

Hashing (seed, content) to a number in [0, 1) and cutting that interval by the fractions
gives a split that is stratified in expectation (every class is cut the same way), never
moves an image when others are added or removed, and sends identical files to the same
split, so no test image is also a training image.

>>> split_of("cd" * 32, seed=42, val_fraction=0.15, test_fraction=0.15)
'train'
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

SPLITS = ("train", "val", "test")


def unit_hash(sha256: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the content hash and the seed."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(
    sha256: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    fixed_test: bool = False,
) -> str:
    """train, val or test for one image.

    With ``fixed_test`` the source already has a test set (Intel's seg_test): the image
    is not in it, so only train and val are drawn, val with probability val_fraction.
    """
    u = unit_hash(sha256, seed)
    if fixed_test:
        return "val" if u < val_fraction else "train"
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(
    items: Sequence[tuple[str, str | None]],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    fixed_test: bool = False,
) -> list[str]:
    """Splits for (sha256, given split or None) pairs, keeping duplicates together.

    A given split ("test" for a source's own test set, else None) wins; when one copy of a
    file is in a given test set, every copy goes to test, so it is never trained on.
    ``fixed_test`` says the source has its own test set, so the rest is only train/val.
    """
    pinned: dict[str, str] = {sha: "test" for sha, given in items if given == "test"}
    return [
        pinned.get(sha)
        or given
        or split_of(sha, seed, val_fraction, test_fraction, fixed_test=fixed_test)
        for sha, given in items
    ]


def split_counts(labels: Iterable[str], splits: Iterable[str]) -> dict[str, dict[str, int]]:
    """{class: {split: count}} with every split present, zeros included."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for label, split in zip(labels, splits):
        counts[label][split] += 1
    return {label: {s: counts[label][s] for s in SPLITS} for label in sorted(counts)}


def check_split_counts(counts: dict[str, dict[str, int]], small_class: int = 100) -> list[str]:
    """Raise on splits a model cannot be trained or judged with; return warnings otherwise."""
    if len(counts) < 2:
        found = ", ".join(counts) or "none"
        raise ValueError(
            f"Found {len(counts)} class(es) ({found}); a classifier needs at least 2 class "
            "folders, each holding images"
        )
    for label, per_split in counts.items():
        empty = [s for s in SPLITS if per_split[s] == 0]
        if empty:
            total = sum(per_split.values())
            raise ValueError(
                f"Class {label!r} has {total} usable image(s), too few to appear in every "
                f"split (none in {', '.join(empty)}): add images to it, remove the folder, "
                "or change data.split_seed"
            )
    small = {label: sum(c.values()) for label, c in counts.items() if sum(c.values()) < small_class}
    if not small:
        return []
    listed = ", ".join(f"{label!r} {n}" for label, n in sorted(small.items(), key=lambda x: x[1]))
    return [
        f"{len(small)} of {len(counts)} classes have fewer than {small_class} images "
        f"({listed}): expect noisy metrics for them; add images, or set "
        "data.small_class_warning to silence this"
    ]
