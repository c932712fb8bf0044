"""What each exported file costs and keeps: the figures of export.json and its table.

Per file and for the Keras model it came from: size, the run's memory estimate at the file's
precision (parameters at 4/2/1 bytes, inference peak), test accuracy and macro-F1 on the
run's recorded test split, agreement with the Keras model, and CPU latency and throughput
at batch 1 and batch 32, measured here. Shared by the export stage, the report and
benchmarks/export.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.export.record import ExportRecord, MemoryFigures, ModelFigures
from pipeline.runs import MODEL_FILE

Predictor = Callable[[np.ndarray], np.ndarray]  # raw pixels (batch, h, w, 3) -> probabilities
BATCHES = (1, 32)  # the batch sizes latency and throughput are measured at
# Value type of each format's weights and arithmetic, for the memory estimate's figures.
PRECISION = {
    "keras": "float32",
    "tflite": "float32",
    "tflite-fp16": "float16",
    "tflite-int8": "int8",
    "saved_model": "float32",
}
BYTES = {"float32": 4, "float16": 2, "int8": 1}


def score(
    clf: Any,
    rows: list,
    predictors: dict[str, Predictor],
    latency_images: int,
    probabilities: dict[str, np.ndarray] | None = None,
    unknown_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, ModelFigures]:
    """Per predictor and for the Keras model ("keras"): test accuracy, macro-F1, top-1
    agreement with Keras, the largest probability difference, and ``speed(...)``; each
    one's probabilities go into ``probabilities`` when given. With ``unknown_scores``, the
    same pass fills it with the unknown scores of the Keras model (its detector) and of each
    predictor that answers them (a .tflite file with the unknown_score output).

    Every model sees the same raw batches; Keras gets them preprocessed, as in training.
    """
    from sklearn.metrics import f1_score

    from pipeline.backbones import preprocess

    backbone = clf.spec.backbone

    def keras_predict(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(clf.model.predict_on_batch(preprocess(pixels, backbone)))

    def keras_scored(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return clf.predict_scored(preprocess(pixels, backbone))

    every = {"keras": keras_predict, **predictors}
    # What the test pass calls: with unknown_scores, whatever answers both in one call
    passes: dict[str, Callable[[np.ndarray], Any]] = {
        name: (lambda x, p=predict: (p(x), None)) for name, predict in every.items()
    }
    if unknown_scores is not None:
        passes["keras"] = keras_scored
        passes.update({n: p.scored for n, p in predictors.items() if hasattr(p, "scored")})
    probs: dict[str, list[np.ndarray]] = {name: [] for name in every}
    found: dict[str, list[np.ndarray]] = {name: [] for name in every}
    kept: list[np.ndarray] = []  # the first test images, for the latency runs
    for batch in clf.eval_dataset(rows, preprocessed=False):
        pixels = batch.numpy()
        kept.extend(pixels[: max(BATCHES) - len(kept)])
        for name, answer in passes.items():
            p, u = answer(pixels)
            probs[name].append(np.asarray(p))
            if u is not None:
                found[name].append(np.asarray(u, np.float64))
    if unknown_scores is not None:
        unknown_scores.update({n: np.concatenate(u) for n, u in found.items() if u})
    y_true = np.array([r.label_index for r in rows])
    labels = list(range(len(clf.labels)))
    reference = np.concatenate(probs["keras"])
    scores: dict[str, ModelFigures] = {}
    for name, predict in every.items():
        p = np.concatenate(probs[name])
        if probabilities is not None:
            probabilities[name] = p
        predicted = p.argmax(axis=1)
        scores[name] = {
            "accuracy": float(np.mean(predicted == y_true)),
            "macro_f1": float(
                f1_score(y_true, predicted, labels=labels, average="macro", zero_division=0)
            ),
            "top1_agreement": float(np.mean(predicted == reference.argmax(axis=1))),
            "max_probability_difference": float(np.abs(p - reference).max()),
            **speed(predict, kept, latency_images),
        }
    return scores


def speed(predict: Predictor, images: list[np.ndarray], latency_images: int) -> dict[str, float]:
    """ms per image and images/s at batch 1 (``latency_images`` single-image calls) and at
    batch 32 (enough batches for as many images, at least 3; the test images repeated when
    fewer than 32), each after one warm-up call. Keys: latency_ms_b1, throughput_b1, ..."""
    figures = {}
    for size in BATCHES:
        if size == 1:
            inputs = [images[i % len(images)][None] for i in range(latency_images)]
        else:
            batch = np.stack([images[i % len(images)] for i in range(size)])
            inputs = [batch] * max(3, math.ceil(latency_images / size))
        predict(inputs[0])  # warm-up: the interpreter resizes, Keras traces
        start = time.perf_counter()
        for x in inputs:
            predict(x)
        ms = 1000 * (time.perf_counter() - start) / (len(inputs) * size)
        figures[f"latency_ms_b{size}"] = ms
        figures[f"throughput_b{size}"] = 1000 / ms
    return figures


def estimate_figures(estimate: Any, fmt: str) -> MemoryFigures | None:
    """The run's memory estimate (a MemoryEstimate, made at float32) at ``fmt``'s precision:
    parameters at 4, 2 or 1 bytes and one image's inference peak (parameters + the largest
    set of activations alive at once) at the same size; None without an estimate."""
    if estimate is None:
        return None
    precision = PRECISION[fmt]
    size = BYTES[precision]
    peak_values = estimate.inference_bytes // BYTES["float32"] - estimate.params
    return {
        "precision": precision,
        "parameter_bytes": estimate.params * size,
        "inference_bytes": (estimate.params + peak_values) * size,
    }


def accuracy_warnings(figures: ExportRecord, max_drop: float) -> list[str]:
    """One line per exported file whose test accuracy is more than ``max_drop`` below the
    Keras model's, with both figures: the file is kept, the user decides."""
    keras_accuracy = figures["keras"]["accuracy"]
    lines = []
    for variant in figures["variants"].values():
        drop = keras_accuracy - variant["accuracy"]
        if drop > max_drop:
            lines.append(
                f"warning: {variant['file']} scores {variant['accuracy']:.4f} on the test split, "
                f"{100 * drop:.1f} points below the Keras model's {keras_accuracy:.4f} "
                f"(export.max_drop={max_drop}); the file is written: calibrate on more images "
                "(export.calibration_images) or use model_fp16.tflite"
            )
    return lines


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f} MiB"


# The table's columns, printed and in the run's report: (header, width, key in a row of
# figures, "a.b" for a nested one, formatter of its value).
COLUMNS: list[tuple[str, int, str, Callable[[Any], str]]] = [
    ("size", 10, "size_bytes", _mib),
    ("est. params", 11, "estimate.parameter_bytes", _mib),
    ("est. peak", 10, "estimate.inference_bytes", _mib),
    ("accuracy", 8, "accuracy", "{:.4f}".format),
    ("macro-F1", 8, "macro_f1", "{:.4f}".format),
    ("agreement", 9, "top1_agreement", "{:.3f}".format),
    ("max |dp|", 8, "max_probability_difference", "{:.2e}".format),
    ("ms b1", 7, "latency_ms_b1", "{:.2f}".format),
    ("img/s b1", 8, "throughput_b1", "{:.0f}".format),
    ("ms b32", 7, "latency_ms_b32", "{:.2f}".format),
    ("img/s b32", 9, "throughput_b32", "{:.0f}".format),
    ("unk agree", 9, "unknown.flag_agreement", "{:.3f}".format),
    ("labels", 6, "metadata.labels", "{:d}".format),
    ("MP agree", 8, "mediapipe.top1_agreement", "{:.3f}".format),
    ("MP unk", 6, "mediapipe.unknown_agreement", "{:.3f}".format),
    ("MP ms", 6, "mediapipe.latency_ms", "{:.2f}".format),
]


def figure(row: ModelFigures, key: str) -> Any:
    """A row's value under a dotted ``key``; None where it is missing."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def cell(row: ModelFigures, key: str, formatter: Callable[[Any], str]) -> str:
    value = figure(row, key)
    return "n/a" if value is None else formatter(value)


def table_note(figures: ExportRecord) -> str:
    """What the columns mean, under the table."""
    return (
        f"{figures['test_images']} test images of {figures['run']}; agreement: share of the "
        f"same top-1 as {MODEL_FILE}; est.: the run's memory estimate at the file's precision "
        f"(parameters; inference peak, one image); ms: per image; {figures['latency']}; "
        "unk agree: share of photos flagged unknown (or not) as the Keras model's detector "
        "flags them, from the file's unknown_score output; labels: class names in the file's "
        "TFLite metadata; MP: MediaPipe's ImageClassifier on the same file, top-1 and "
        "unknown-flag agreement with this project's interpreter, ms per image"
    )


def format_table(figures: ExportRecord) -> str:
    """The printed table: the Keras model first, then each exported file."""
    header = f"{'file':<20}" + "".join(f" {name:>{width}}" for name, width, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in (figures["keras"], *figures["variants"].values()):
        lines.append(
            f"{row['file']:<20}"
            + "".join(f" {cell(row, key, fmt):>{width}}" for _, width, key, fmt in COLUMNS)
        )
    lines.append(table_note(figures))
    return "\n".join(lines)
