"""The export stage (`make export`): a trained run as files a device or server can run.

Public entry: ``export(cfg)``. From models/<run>/model.keras it writes, under
models/<run>/export/, TFLite float32, float16-weight and full-integer int8 files (or a
SavedModel), each taking raw RGB pixels in [0, 255] at the run's size with the backbone's
preprocessing inside, as the run's own SavedModel does. Each file is then scored on the
run's recorded test split (the photos `make evaluate` scores) against the Keras model it
came from: accuracy, macro-F1, agreement, CPU latency. export.json keeps the figures.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, ExportConfig
from pipeline.files import atomic_write_bytes, read_json, replace_dir, write_json
from pipeline.predict import Classifier, load_classifier, read_run
from pipeline.runs import MODEL_FILE

EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
# export.format -> the file (or folder) it writes under models/<run>/export/.
VARIANT_FILES = {
    "tflite": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "saved_model": "saved_model",
}
ALL_TFLITE = ("tflite", "tflite-fp16", "tflite-int8")
INPUT_NOTE = (
    "float32 RGB pixels in [0, 255], shape (batch, size, size, 3), decoded and centre-cropped "
    "as make evaluate does; the backbone's preprocessing is inside"
)

Predictor = Callable[[np.ndarray], np.ndarray]  # raw pixels (batch, h, w, 3) -> probabilities


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]  # format -> file written
    figures: dict[str, Any]  # export.json as written
    warnings: list[str] = field(default_factory=list)


def export(cfg: Config) -> ExportResult:
    """Export the run cfg.eval.run (newest if empty) as cfg.export.format and score it."""
    from pipeline.evaluate import scored_rows

    run_dir, _, _ = read_run(cfg.eval.run, cfg.paths.models)  # a bad RUN fails before TF
    formats = ALL_TFLITE if cfg.export.format == "all" else (cfg.export.format,)
    clf = load_classifier(run_dir, cfg.paths.models)
    rows = scored_rows(clf, "test")
    if not rows:
        raise ValueError(
            f"{run_dir}: its recorded test split is empty; train it on a data set with test images"
        )
    out = run_dir / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    print(f"Exporting {run_dir} as {', '.join(formats)} into {out}/")
    files = write_variants(clf, formats, cfg.export, out)
    predictors = {fmt: _predictor(fmt, path) for fmt, path in files.items()}
    print(f"Scoring on the run's test split ({len(rows)} images) against {MODEL_FILE}")
    scores = score(clf, rows, predictors, cfg.export.latency_images)
    for fmt, path in files.items():
        scores[fmt].update(file=path.name, size_bytes=_size(path))
    scores["keras"].update(file=MODEL_FILE, size_bytes=_size(run_dir / MODEL_FILE))
    figures = _export_json(clf, out, len(rows), cfg.export, scores, files)
    warnings = accuracy_warnings(figures, cfg.export.max_drop)
    figures["warnings"] = warnings
    write_json(out / EXPORT_JSON, figures)
    print(format_table(figures))
    for line in warnings:
        print(line, file=sys.stderr)
    print(f"Wrote {out / EXPORT_JSON} and {', '.join(p.name for p in files.values())}")
    return ExportResult(out, files, figures, warnings)


# ----------------------------------------------------------------------------- converting


def write_variants(
    clf: Classifier, formats: tuple[str, ...], options: ExportConfig, out: Path
) -> dict[str, Path]:
    """Each format's file under ``out``, written atomically; all converted from one
    SavedModel whose `serve` holds the preprocessing, so every variant takes raw pixels."""
    serving = out / f".serving.partial-{os.getpid()}"
    shutil.rmtree(serving, ignore_errors=True)
    files = {}
    try:
        _write_serving(clf, serving)
        for fmt in (f for f in formats if f != "saved_model"):
            calibration = _calibration(clf, options.calibration_images) if "int8" in fmt else None
            files[fmt] = atomic_write_bytes(
                out / VARIANT_FILES[fmt], convert(serving, fmt, calibration)
            )
        if "saved_model" in formats:  # the converters' source itself, moved into place whole
            files["saved_model"] = out / VARIANT_FILES["saved_model"]
            replace_dir(serving, files["saved_model"])
    finally:
        shutil.rmtree(serving, ignore_errors=True)
    for path in files.values():
        print(f"  {path.name:<20} {_size(path) / 2**20:7.2f} MiB")
    return files


def _write_serving(clf: Classifier, path: Path) -> None:
    """The Keras model behind `serve`(raw pixels), as the train stage's SavedModel."""
    import keras
    import tensorflow as tf

    from pipeline.backbones import get_backbone, preprocess

    model = clf.model
    size = clf.cfg.image_size
    backbone = get_backbone(clf.cfg.model.backbone)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda pixels: model(preprocess(pixels, backbone), training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(path), verbose=False)


def convert(
    saved_model: Path, fmt: str, calibration: Callable[[], Iterator[list[np.ndarray]]] | None
) -> bytes:
    """One TFLite flatbuffer. int8 is full-integer (every op int8, conversion fails
    otherwise) with float32 input and output kept, so callers feed pixels as for fp32."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    if fmt == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _calibration(clf: Classifier, count: int) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Up to ``count`` training images of the run's recorded split, drawn at random (seed
    train.seed) across classes, through the evaluation crop as raw pixels, one per batch."""
    from pipeline.inputs import build_eval_dataset
    from pipeline.provenance import load_run_data

    train = load_run_data(clf.run_dir).rows("train")
    rng = np.random.default_rng(clf.cfg.train.seed)
    pick = sorted(rng.choice(len(train), size=min(count, len(train)), replace=False))
    ds = build_eval_dataset(
        [train[i] for i in pick], clf.cfg, None, batch_size=1, apply_preprocessing=False
    )

    def representative() -> Iterator[list[np.ndarray]]:
        for x in ds:
            yield [x.numpy()]

    return representative


def _predictor(fmt: str, path: Path) -> Predictor:
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # referenced: its variables must stay alive
        return lambda pixels: loaded.serve(tf.constant(pixels, tf.float32)).numpy()
    from pipeline.tflite import TFLiteModel

    return TFLiteModel(path)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ----------------------------------------------------------------------------- scoring


def score(
    clf: Classifier, rows: list, predictors: dict[str, Predictor], latency_images: int
) -> dict[str, dict[str, Any]]:
    """Per predictor and for the Keras model ("keras"): test accuracy, macro-F1, top-1
    agreement with Keras, the largest probability difference, and ms per image at batch 1.

    Every model sees the same raw batches; Keras gets them preprocessed, as in training.
    """
    from sklearn.metrics import f1_score

    from pipeline.backbones import get_backbone, preprocess
    from pipeline.inputs import build_eval_dataset

    backbone = get_backbone(clf.cfg.model.backbone)

    def keras_predict(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(clf.model.predict_on_batch(preprocess(pixels, backbone)))

    every = {"keras": keras_predict, **predictors}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in every}
    kept: list[np.ndarray] = []  # the first test images, for the latency runs
    for batch in build_eval_dataset(rows, clf.cfg, None, apply_preprocessing=False):
        pixels = batch.numpy()
        if len(kept) < latency_images:
            kept.extend(pixels[: latency_images - len(kept)])
        for name, predict in every.items():
            probs[name].append(predict(pixels))
    y_true = np.array([r.label_index for r in rows])
    labels = list(range(len(clf.labels)))
    reference = np.concatenate(probs["keras"])
    scores = {}
    for name, predict in every.items():
        p = np.concatenate(probs[name])
        predicted = p.argmax(axis=1)
        scores[name] = {
            "accuracy": float(np.mean(predicted == y_true)),
            "macro_f1": float(
                f1_score(y_true, predicted, labels=labels, average="macro", zero_division=0)
            ),
            "top1_agreement": float(np.mean(predicted == reference.argmax(axis=1))),
            "max_probability_difference": float(np.abs(p - reference).max()),
            "latency_ms": latency_ms(predict, kept),
        }
    return scores


def latency_ms(predict: Predictor, images: list[np.ndarray]) -> float:
    """Mean wall time of one image at batch 1, after one warm-up call (milliseconds)."""
    predict(images[0][None])
    start = time.perf_counter()
    for image in images:
        predict(image[None])
    return 1000 * (time.perf_counter() - start) / len(images)


def _export_json(
    clf: Classifier,
    out: Path,
    test_images: int,
    options: ExportConfig,
    scores: dict[str, dict[str, Any]],
    files: dict[str, Path],
) -> dict[str, Any]:
    """This export's figures, keeping those of earlier variants whose files remain (an
    int8-only export after a full one leaves the float32 figures in place)."""
    from pipeline.tflite import cpu_threads

    earlier = read_json(out / EXPORT_JSON) or {}
    variants = {
        fmt: figures
        for fmt, figures in (earlier.get("variants") or {}).items()
        if fmt not in files and (out / figures.get("file", "")).exists()
    }
    variants.update({fmt: scores[fmt] for fmt in files})
    return {
        "run": clf.run_dir.name,
        "image_size": clf.cfg.image_size,
        "labels": clf.labels,
        "input": INPUT_NOTE,
        "output": "float32 probabilities, one per label, in labels' order",
        "split": "test",
        "test_images": test_images,
        "calibration_images": options.calibration_images,
        "latency": (
            f"CPU, batch 1, mean of {options.latency_images} images, {cpu_threads()} threads"
        ),
        "max_drop": options.max_drop,
        "keras": scores["keras"],
        "variants": dict(sorted(variants.items(), key=lambda kv: list(VARIANT_FILES).index(kv[0]))),
        "warnings": [],
    }


def accuracy_warnings(figures: dict[str, Any], max_drop: float) -> list[str]:
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


def format_table(figures: dict[str, Any]) -> str:
    """The printed table: the Keras model first, then each exported file."""
    header = (
        f"{'file':<20} {'size':>10} {'accuracy':>9} {'macro-F1':>9} "
        f"{'agreement':>10} {'max |dp|':>9} {'ms/image':>9}"
    )
    lines = [header, "-" * len(header)]
    for figures_ in (figures["keras"], *figures["variants"].values()):
        lines.append(
            f"{figures_['file']:<20} {figures_['size_bytes'] / 2**20:>6.2f} MiB "
            f"{figures_['accuracy']:>9.4f} {figures_['macro_f1']:>9.4f} "
            f"{figures_['top1_agreement']:>10.3f} {figures_['max_probability_difference']:>9.2e} "
            f"{figures_['latency_ms']:>9.2f}"
        )
    lines.append(
        f"{figures['test_images']} test images of {figures['run']}; agreement: share of the "
        f"same top-1 as {MODEL_FILE}; latency: {figures['latency']}"
    )
    return "\n".join(lines)
