"""Photos that fit no class: a k-nearest-neighbour distance in the run's own feature space.

A photo's ``unknown_score`` is the cosine distance (1 - cosine similarity) from its pooled
base features to the k-th nearest of the run's training photos' features (Sun et al. 2022,
"Out-of-distribution detection with deep nearest neighbors": L2-normalised features,
k-th distance, no assumption about their distribution). A photo far from every training
photo is flagged ``unknown`` when its score exceeds a threshold set on the validation
photos: the (1 - rate) quantile of their scores, so that a share ``rate`` of photos like the
training ones is flagged by mistake.

The train stage fits the detector (``fit_detector``) and stores it with the run
(``models/<run>/ood.npz``): the training features (normalised, float16), k, the rate, the
threshold and the validation scores, so that a predict run given another rate recomputes
the threshold from the same photos instead of reusing one set for another rate.

>>> import numpy as np
>>> bank = np.eye(3)[[0, 0, 1, 1]]  # two photos on each of two axes
>>> knn_distance(bank, np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]), k=2).round(3)
array([0.005, 1.   ])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.evaluate.metrics import UnknownScores
from pipeline.files import atomic_path

UNKNOWN_FILE = "ood.npz"
# k = 10: the score asks "is this photo near a handful of training photos?", robust to one
# or two odd training photos yet below the photos per class even of small data sets (the
# test fixture has about 55 per class); Sun et al. found the k-th distance insensitive to k
# over a wide range. Fewer training photos than k: k is their count.
NEIGHBOURS = 10
# Columns `make predict` writes, before ``reason``.
UNKNOWN_COLUMNS = ("unknown_score", "unknown")


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    x = np.asarray(features, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_distance(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance from each query to its k-th nearest row of ``bank`` (unit rows),
    float64.

    Brute force, which is what a k-NN index does at this size too: one matrix product per
    batch of photos.
    """
    if len(queries) == 0:
        return np.zeros(0)
    similarity = normalise(queries) @ np.asarray(bank, np.float32).T
    kth = np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return 1.0 + kth.astype(np.float64)  # 1 - (k-th largest similarity)


def threshold_for(val_scores: np.ndarray, rate: float) -> float:
    """The score above which a share ``rate`` of the validation photos lies."""
    return float(np.quantile(np.asarray(val_scores, np.float64), 1.0 - rate))


@dataclass(frozen=True)
class UnknownDetector:
    """A run's training features and the threshold its validation photos set."""

    bank: np.ndarray = field(repr=False)  # (train images, width), unit rows, float16
    k: int
    rate: float  # share of validation photos flagged by mistake
    threshold: float
    val_scores: np.ndarray = field(repr=False)  # float64, what the threshold came from

    @cached_property
    def _bank32(self) -> np.ndarray:
        return self.bank.astype(np.float32)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Each photo's unknown_score (higher: further from every training photo)."""
        return knn_distance(self._bank32, features, self.k)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def set_on(self, val_scores: np.ndarray) -> UnknownDetector:
        """The same detector with its threshold set at its rate on other scores of the
        validation photos: an exported file's own, which rounding moved."""
        scores = np.asarray(val_scores, np.float64)
        return replace(self, threshold=threshold_for(scores, self.rate), val_scores=scores)

    def with_rate(self, rate: float) -> UnknownDetector:
        """The same detector with the threshold set for another rate, on the same photos."""
        if rate == self.rate:
            return self
        return replace(self, rate=rate, threshold=threshold_for(self.val_scores, rate))


def fit_detector(
    train_features: np.ndarray, val_features: np.ndarray, rate: float, k: int = NEIGHBOURS
) -> UnknownDetector:
    """A detector from the training photos' features, its threshold set on validation's."""
    if len(train_features) == 0 or len(val_features) == 0:
        raise ValueError(
            "an unknown-photo detector needs training and validation photos; "
            f"got {len(train_features)} and {len(val_features)}"
        )
    bank = normalise(train_features).astype(np.float16)
    k = min(k, len(bank))
    val_scores = knn_distance(bank.astype(np.float32), val_features, k)
    return UnknownDetector(bank, k, rate, threshold_for(val_scores, rate), val_scores)


def save_detector(path: Path, detector: UnknownDetector) -> Path:
    """``ood.npz``, written atomically."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            bank=detector.bank,
            k=detector.k,
            rate=detector.rate,
            threshold=detector.threshold,
            val_scores=detector.val_scores,
        )
    return path


def load_detector(run_dir: Path) -> UnknownDetector | None:
    """The run's detector, or None for a run trained before it existed (no ood.npz)."""
    path = Path(run_dir) / UNKNOWN_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return UnknownDetector(
                bank=data["bank"],
                k=int(data["k"]),
                rate=float(data["rate"]),
                threshold=float(data["threshold"]),
                val_scores=data["val_scores"],
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable unknown-photo detector ({type(exc).__name__}: {exc}); "
            "delete it (predict then leaves unknown_score empty) or retrain the run"
        ) from None


def unknown_cells(detector: UnknownDetector | None, score: float | None) -> dict[str, object]:
    """The CSV's two columns for one photo: empty without a detector."""
    if detector is None or score is None:
        return dict.fromkeys(UNKNOWN_COLUMNS, "")
    return {
        "unknown_score": float(score),
        "unknown": "true" if score > detector.threshold else "false",
    }


def unknown_separation(
    detector: UnknownDetector,
    split_scores: np.ndarray,
    other_scores: np.ndarray | None,
    other_photos: str | None,
) -> UnknownScores:
    """How well the score tells the split's photos from ``other_photos``' (AUROC, the
    others as positives) and the share of each flagged at the detector's threshold."""
    from sklearn.metrics import roc_auc_score

    other = np.zeros(0) if other_scores is None else np.asarray(other_scores)
    auroc = None
    if len(other) and len(split_scores):
        truth = np.r_[np.zeros(len(split_scores)), np.ones(len(other))]
        auroc = float(roc_auc_score(truth, np.r_[split_scores, other]))
    return {
        "k": detector.k,
        "rate": detector.rate,
        "threshold": detector.threshold,
        "split_images": len(split_scores),
        "split_flagged": float(np.mean(detector.flags(split_scores))) if len(split_scores) else 0.0,
        "other_photos": other_photos,
        "other_images": len(other),
        "other_flagged": float(np.mean(detector.flags(other))) if len(other) else None,
        "auroc": auroc,
    }
