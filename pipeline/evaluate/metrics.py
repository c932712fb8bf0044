"""Classification metrics from true labels and predicted probabilities: pure functions.

Naming as in scikit-learn: ``*_accuracy`` and ``*_score``, higher is better; ``*_loss``
and ``*_error``, lower is better. Every figure is derived from the same probabilities, so
the numbers agree with each other (the tests check that they do).

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> m = classification_metrics(np.array([0, 1, 1]), probs, ["cat", "dog"], top_k=2)
>>> m["accuracy"], m["confusion"]
(0.6666666666666666, [[1, 0], [1, 1]])
>>> m["top_k"], m["top_1_accuracy"]
(1, 0.6666666666666666)
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

# One class's row of metrics.json's ``per_class`` ("class" is a keyword: functional form).
ClassScores = TypedDict(
    "ClassScores",
    {
        "class": str,
        "precision": float,
        "recall": float,
        "f1": float,
        "support": int,
        "roc_auc": float | None,
        "average_precision": float | None,
    },
)


class BaselineComparison(TypedDict):
    """metrics.json's ``baseline``: the run's frozen-feature baseline on the scored split."""

    method: str
    C: float
    kept_phase: str | None  # "1" or "2", as summary.json keys it
    accuracy: float
    macro_f1: float
    images: int
    accuracy_points_over_baseline: float
    macro_f1_points_over_baseline: float


class Mistake(TypedDict):
    path: str
    true: str
    predicted: str
    probability: float


class ConfusedPair(TypedDict):
    true: str
    predicted: str
    count: int


class CalibrationScores(TypedDict):
    """metrics.json's ``calibration``: the run's temperature and the expected calibration
    error on the scored split without it (``ece_before``) and with it (``ece_after``, the
    model's own, equal to ``expected_calibration_error``); None for a run not calibrated."""

    temperature: float
    ece_before: float
    ece_after: float
    reliability_before: list[dict[str, Any]]


class UnknownScores(TypedDict):
    """metrics.json's ``unknown``: how the run's unknown_score separates the scored split
    from photos of another kind (eval.unknown_photos), at the run's stored threshold."""

    k: int
    rate: float
    threshold: float
    split_images: int
    split_flagged: float  # share of the split's photos flagged unknown
    other_photos: str | None  # eval.unknown_photos; None when not given
    other_images: int
    other_flagged: float | None
    auroc: float | None  # other photos as positives, unknown_score as the score


class Metrics(TypedDict, total=False):
    """metrics.json as evaluate writes it (``memory`` is added on writing), and what
    ``evaluate`` returns. ``classification_metrics`` fills the scores, and also
    ``top_<k>_accuracy`` for its k, a key a TypedDict cannot name; the stage adds the run,
    split, tta, baseline, worst mistakes, confused pairs, calibration and unknown."""

    images: int
    accuracy: float
    top_k: int
    loss: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_f1: float
    expected_calibration_error: float
    per_class: list[ClassScores]
    confusion: list[list[int]]
    confusion_normalised: list[list[float]]
    reliability: list[dict[str, Any]]
    run: str
    split: str
    tta: str
    baseline: BaselineComparison | None
    worst_mistakes: list[Mistake]
    confused_pairs: list[ConfusedPair]
    calibration: CalibrationScores | None
    unknown: UnknownScores | None


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Confidence against accuracy in equal-width bins, and the expected calibration error."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        conf = float(confidence[mask].mean()) if n else None
        acc = float(correct[mask].mean()) if n else None
        if n:
            ece += n / len(y_true) * abs(acc - conf)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"bins": table, "expected_calibration_error": float(ece)}


def one_vs_rest_curves(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """Per class: ROC and precision-recall curves with their AUC (None without positives)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    curves = []
    for c in range(probs.shape[1]):
        positive = y_true == c
        if positive.all() or not positive.any():
            curves.append({"roc_auc": None, "average_precision": None})
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        precision, recall, _ = precision_recall_curve(positive, probs[:, c])
        curves.append(
            {
                "fpr": fpr,
                "tpr": tpr,
                "roc_auc": float(auc(fpr, tpr)),
                "precision": precision,
                "recall": recall,
                "average_precision": float(average_precision_score(positive, probs[:, c])),
            }
        )
    return curves


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], top_k: int = 5
) -> Metrics:
    """Everything `make evaluate` reports, JSON-ready (curves excluded: see one_vs_rest_curves)."""
    from sklearn.metrics import (
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    curves = one_vs_rest_curves(y_true, probs)
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": curves[i]["roc_auc"],
            "average_precision": curves[i]["average_precision"],
        }
        for i, name in enumerate(classes)
    ]
    calibration = reliability(y_true, probs)
    k = max(1, min(top_k, len(classes) - 1))  # top-k over every class is always 1: say k-1
    # labels=: classes absent from this split still count. Two classes: scikit-learn takes
    # the second class's score alone. log_loss warns unless rows sum to 1 within float64
    # precision, which a float32 softmax misses by ~1e-7: rows are renormalised in float64
    # first. It clips to [eps, 1 - eps] (float64: 2.2e-16; a sure mistake costs ~36).
    scores = probs[:, 1] if len(classes) == 2 else probs
    probs64 = np.asarray(probs, dtype=np.float64)
    probs64 = probs64 / probs64.sum(axis=1, keepdims=True)
    return {
        "images": len(y_true),
        "accuracy": float(np.mean(y_pred == y_true)),
        f"top_{k}_accuracy": float(top_k_accuracy_score(y_true, scores, k=k, labels=labels)),
        "top_k": k,
        "loss": float(log_loss(y_true, probs64, labels=labels)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "weighted_f1": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "expected_calibration_error": calibration["expected_calibration_error"],
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "confusion_normalised": normalised.tolist(),
        "reliability": calibration["bins"],
    }


def confused_pairs(confusion: np.ndarray, limit: int = 5) -> list[tuple[int, int, int]]:
    """(true, predicted, count) off the diagonal, most frequent first."""
    off = [
        (i, j, int(confusion[i, j]))
        for i in range(len(confusion))
        for j in range(len(confusion))
        if i != j and confusion[i, j] > 0
    ]
    return sorted(off, key=lambda t: (-t[2], t[0], t[1]))[:limit]


def worst_mistakes(y_true: np.ndarray, probs: np.ndarray, limit: int) -> list[int]:
    """Indices of wrong predictions, the most confidently wrong first."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    order = np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")
    return wrong[order][:limit].tolist()
