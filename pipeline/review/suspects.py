"""Which photos a person should look at: suspected label errors and outliers, from pooled
features alone (numpy, scikit-learn and cleanlab; no TensorFlow).

Label errors: every photo gets class probabilities from a logistic regression that never
saw it (k-fold, out of fold), so a misfiled photo is judged by a model fitted on the other
photos, not by one that learned its wrong label. cleanlab's confident learning
(``find_label_issues``) then flags the photos whose given label the probabilities
contradict beyond each class's own noise level, and ranks every photo by the probability
of its given label (``get_label_quality_scores``, self-confidence).

Outliers: cleanlab's ``OutOfDistribution`` scores each photo by its mean cosine distance to
its nearest neighbours in feature space, whatever their class: a screenshot among flowers
is far from all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FOLDS = 5
# The probe's C: of these, the one of lowest out-of-fold log loss. Only strong
# regularisation is offered: a probe that follows the bulk of each class rather than its
# borderline photos flags fewer correct ones; C = 0.1 and 1 flagged more correct photos on
# every set benchmarks/review.py measured, at no gain in the misfiled photos ranked first.
PROBE_GRID = (0.001, 0.003, 0.01)
# cleanlab's rule: a photo is flagged when both per-class pruning and noise-rate pruning
# name it, the stricter of its methods (fewest correct photos flagged).
FILTER_BY = "both"
NEIGHBOURS = 10  # cleanlab's default k for the outlier score


@dataclass(frozen=True)
class LabelSuspects:
    """Per photo, in input order."""

    probabilities: np.ndarray  # (photos, classes) out-of-fold probabilities
    quality: np.ndarray  # probability of the given label: low = suspect
    flagged: np.ndarray  # bool: cleanlab names it a label issue
    suggested: np.ndarray  # the most probable class index

    def ranking(self) -> np.ndarray:
        """Photo indices, most suspect first (flagged before unflagged, then by quality)."""
        return np.lexsort((self.quality, ~self.flagged))


def folds_for(labels: np.ndarray, folds: int = FOLDS) -> int:
    """The folds stratified k-fold can make: at most the smallest class's photo count.

    >>> folds_for(np.array([0, 0, 0, 1, 1, 1, 1]))
    3
    """
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if smallest < 2:
        raise ValueError(
            "a class has fewer than 2 training and validation photos, too few to judge its "
            "labels out of fold; add photos to it (or leave it out of the folder)"
        )
    return min(folds, smallest)


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    grid: Sequence[float] = PROBE_GRID,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Class probabilities of each photo from a logistic regression fitted on the folds that
    leave it out, (photos, num_classes), zero for a class no fold saw; with the grid's C of
    lowest out-of-fold log loss, which gave them."""
    cv = StratifiedKFold(folds_for(labels), shuffle=True, random_state=seed)
    present = np.unique(labels)
    best: tuple[float, np.ndarray, float] | None = None
    for c in grid:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        with warnings.catch_warnings():  # the cap is generous; a near-optimum is still one
            warnings.simplefilter("ignore", ConvergenceWarning)
            probs = cross_val_predict(probe, features, labels, cv=cv, method="predict_proba")
        loss = log_loss(labels, probs, labels=present)
        if best is None or loss < best[0]:
            best = (loss, probs, c)
    assert best is not None, "an empty grid of C values"
    full = np.zeros((len(labels), num_classes))
    full[:, present] = best[1]
    return full, best[2]


def label_suspects(labels: np.ndarray, probabilities: np.ndarray) -> LabelSuspects:
    """cleanlab's verdict and ranking on out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = np.unique(labels)  # cleanlab wants every column to be a class with photos
    index = np.searchsorted(present, labels)
    probs = probabilities[:, present]
    probs = probs / probs.sum(axis=1, keepdims=True)
    flagged = find_label_issues(index, probs, filter_by=FILTER_BY)
    quality = get_label_quality_scores(index, probs, method="self_confidence")
    return LabelSuspects(probabilities, quality, flagged, present[probs.argmax(axis=1)])


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """Per photo, how atypical it is among all the photos: 0 (typical) to 1 (far from all).

    cleanlab's score is exp(-mean cosine distance to the k nearest others); this returns one
    minus it, so that higher means more suspect, like the label ranking's order.
    """
    from cleanlab.outlier import OutOfDistribution

    k = min(NEIGHBOURS, len(features) - 1)
    if k < 1:
        return np.zeros(len(features))
    ood = OutOfDistribution({"k": k})
    with warnings.catch_warnings():  # cleanlab notes when k is below its default
        warnings.simplefilter("ignore", UserWarning)
        return 1.0 - ood.fit_score(features=np.asarray(features, np.float32), verbose=False)
