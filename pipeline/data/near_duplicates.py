"""Near-copies: photos whose perceptual hashes (``pipeline.images.perceptual_hash``) lie
within a few bits of each other, grouped so that a group lands in one split.

The same photo saved twice at two sizes, or re-encoded, is not byte-identical, so the
sha256 rule that keeps exact copies together misses it; one copy in training and one in
test makes test accuracy look better than it is. Two hashes within ``max_bits`` bits are
linked and a group is a connected component of those links (so a chain of near-copies is
one group).

Finding the links without comparing every pair: cut the 64 bits into ``max_bits + 1``
blocks; two hashes that differ in at most ``max_bits`` bits agree exactly on at least one
block (pigeonhole), so only hashes sharing a block's value are compared. Light to import
(numpy and scipy, no TensorFlow).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.exclude import EXCLUDE_FILE
from pipeline.images import text_path

BITS = 64  # the perceptual hash's length
NEAR_DUPLICATES_REPORT = "near_duplicates.csv"


def _values(hashes: Sequence[str]) -> np.ndarray:
    return np.array([int(h, 16) if h else 0 for h in hashes], dtype=np.uint64)


def close_pairs(hashes: Sequence[str], max_bits: int) -> np.ndarray:
    """(i, j) index pairs, i < j, of hashes at most ``max_bits`` bits apart; shape (n, 2).
    Empty hashes (files not decoded by this version's check) pair with nothing."""
    values = _values(hashes)
    known = np.array([bool(h) for h in hashes])
    if max_bits < 0 or known.sum() < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bounds = np.linspace(0, BITS, min(max_bits, BITS - 1) + 2).astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in itertools.pairwise(bounds):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        block = (values >> np.uint64(lo)) & mask
        order = np.flatnonzero(known)[np.argsort(block[known], kind="stable")]
        ordered = block[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for start, end in zip(starts, [*starts[1:], len(order)]):
            if end - start < 2:
                continue
            members = order[start:end]
            x = values[members]
            near = np.bitwise_count(x[:, None] ^ x[None, :]) <= max_bits
            for a, b in zip(*np.nonzero(np.triu(near, 1))):
                i, j = sorted((int(members[a]), int(members[b])))
                found.add((i, j))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def group_labels(hashes: Sequence[str], max_bits: int) -> np.ndarray:
    """For each hash, the number of its group (connected components of close_pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    pairs = close_pairs(hashes, max_bits)
    links = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(links, directed=False)[1]


def split_keys(sha256s: Sequence[str], hashes: Sequence[str], max_bits: int) -> list[str]:
    """The content key each image's split is drawn from: the smallest sha256 of its group,
    so a group shares one split; an image in no group keeps its own sha256.

    An image's split moves only when a near-copy of it with a smaller sha256 is added.
    """
    labels = group_labels(hashes, max_bits)
    smallest: dict[int, str] = {}
    for label, sha in zip(labels.tolist(), sha256s):
        smallest[label] = min(sha, smallest.get(label, sha))
    return [smallest[label] for label in labels.tolist()]


def near_groups(keys: Sequence[str], sha256s: Sequence[str]) -> list[list[int]]:
    """Indices of each group (images sharing a split key) that holds more than one distinct
    file: the near-copies, with any identical copies among them."""
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    return [g for g in by_key.values() if len({sha256s[i] for i in g}) > 1]


def near_duplicate_warnings(
    groups: list[list[tuple[str, str, str]]], bits: int, dataset_dir: Path
) -> list[str]:
    """One line for the groups, and one naming the files of each group whose labels differ."""
    if not groups:
        return []
    msgs = [
        f"{sum(map(len, groups))} near-duplicate photos in {len(groups)} group(s) (hashes within "
        f"{bits} bits; data.near_duplicate_bits); each group shares a split "
        f"(see {NEAR_DUPLICATES_REPORT})"
    ]
    for group in (g for g in groups if len({label for _, label, _ in g}) > 1):
        named = ", ".join(f"{text_path(p)} ({label})" for p, label, _ in group[:4])
        msgs.append(
            f"near-duplicate photos filed under different classes: {named}; look at them and "
            f"list the wrongly filed one in {dataset_dir / EXCLUDE_FILE}, or move it"
        )
    return msgs
