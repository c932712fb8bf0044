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

from typing import Any

import numpy as np


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
) -> dict[str, Any]:
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
