"""The export stage (`make export`): a trained run as files a device or server can run.

Public entry: ``export(cfg)``. From models/<run>/model.keras it writes, under
models/<run>/export/, TFLite float32, float16-weight and full-integer int8 files (or a
SavedModel), each taking raw RGB pixels in [0, 255] at the run's size with the backbone's
preprocessing inside, as the run's own SavedModel does. Each file is then scored on the
run's recorded test split (the photos `make evaluate` scores) against the Keras model it
came from (``pipeline.export.scores``). Every .tflite file carries TFLite metadata (its
labels, input normalisation and licence: ``pipeline.export.metadata``) so that MediaPipe and
the other task APIs load it as it is, and is checked in MediaPipe where it is installed
(``pipeline.export.runtimes``). A run with an unknown-photo detector gives each file a second
output, ``unknown_score``: its training features ride inside as a constant and the threshold
in the metadata, so a phone flags unknown photos as `make predict` does. export.json keeps
the figures and, per file, what vouches for it (``pipeline.export.record``); the run's HTML
report, when there is one, gets the table too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, ExportConfig
from pipeline.export.metadata import ModelCard, read_metadata, with_metadata
from pipeline.export.record import (
    EXPORT_DIR,
    EXPORT_JSON,
    VARIANT_FILES,
    ExportRecord,
    ModelFigures,
    UnknownFigures,
    file_record,
    file_sha256,
    read_export_record,
    write_export_record,
)
from pipeline.export.scores import (
    PRECISION,
    Predictor,
    accuracy_warnings,
    estimate_figures,
    format_table,
    score,
)
from pipeline.files import atomic_write_bytes, exclusive, replace_dir
from pipeline.predict.classifier import Classifier, load_classifier, read_run
from pipeline.predict.tflite import TFLiteModel
from pipeline.predict.unknown import UnknownDetector
from pipeline.quiet import stderr_without
from pipeline.runs import MODEL_FILE
from pipeline.summary import read_summary

__all__ = ["EXPORT_JSON", "ExportResult", "accuracy_warnings", "export", "format_table"]

QUANTISER_NOTICE = "fully_quantize: "  # printed by the int8 converter for every conversion
ALL_TFLITE = ("tflite", "tflite-fp16", "tflite-int8")
INPUT_NOTE = (
    "float32 RGB pixels in [0, 255], shape (batch, size, size, 3), decoded and centre-cropped "
    "as make evaluate does; the backbone's preprocessing is inside"
)


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]  # format -> file written
    figures: ExportRecord  # export.json as written
    warnings: list[str] = field(default_factory=list)


def export(cfg: Config) -> ExportResult:
    """Export the run cfg.eval.run (newest if empty) as cfg.export.format and score it."""
    from pipeline.evaluate.stage import scored_rows

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
    # One export of a run at a time: export.json keeps the figures of earlier variants, so two
    # exports writing it at once would lose one's.
    with exclusive(out, f"make export RUN={run_dir.name}", wait=True):
        print(f"Exporting {run_dir} as {', '.join(formats)} into {out}/")
        # The validation photos set each file's unknown threshold, as they set the run's.
        val_rows = scored_rows(clf, "val") if _with_unknown(clf, cfg.export) else []
        files, detectors = write_variants(clf, formats, cfg.export, out, val_rows)
        predictors = {fmt: _predictor(fmt, path) for fmt, path in files.items()}
        print(f"Scoring on the run's test split ({len(rows)} images) against {MODEL_FILE}")
        probabilities: dict[str, np.ndarray] = {}
        unknown: dict[str, np.ndarray] | None = {} if _with_unknown(clf, cfg.export) else None
        scores = score(clf, rows, predictors, cfg.export.latency_images, probabilities, unknown)
        found = unknown or {}  # each model's unknown scores on the test photos
        estimate = _memory_estimate(clf)
        for fmt, path in files.items():
            scores[fmt].update(file=path.name, size_bytes=_size(path))
            if path.is_file():  # a .tflite
                detector = detectors.get(fmt)
                scores[fmt].update(
                    tflite_figures(
                        clf,
                        path,
                        rows,
                        probabilities[fmt],
                        detector,
                        found.get(fmt),
                        found.get("keras"),
                    )
                )
            scores[fmt]["estimate"] = estimate_figures(estimate, fmt)
        scores["keras"].update(file=MODEL_FILE, size_bytes=_size(run_dir / MODEL_FILE))
        scores["keras"]["estimate"] = estimate_figures(estimate, "keras")
        figures = _export_json(clf, out, len(rows), cfg.export, scores, files)
        warnings = accuracy_warnings(figures, cfg.export.max_drop)
        figures["warnings"] = warnings
        write_export_record(out, figures)
        print(format_table(figures))
        for line in warnings:
            print(line, file=sys.stderr)
        print(f"Wrote {out / EXPORT_JSON} and {', '.join(p.name for p in files.values())}")
        report = refresh_report(Path(cfg.paths.reports) / run_dir.name, figures)
        if report:
            print(f"Added the table to the run's report: {report}")
    return ExportResult(out, files, figures, warnings)


def _with_unknown(clf: Classifier, options: ExportConfig) -> bool:
    """Whether the .tflite files get the unknown_score output: the run has a detector and
    export.unknown is on."""
    return clf.unknown is not None and options.unknown


def model_card(clf: Classifier, fmt: str, unknown: UnknownDetector | None = None) -> ModelCard:
    """The TFLite metadata's description of one file: backbone, data set, the run's test
    accuracy and the licence of the pretrained weights it was fine-tuned from; with
    ``unknown``, the file's threshold for its second output."""
    cfg, spec, run = clf.cfg, clf.spec, clf.run_dir.name
    backbone = spec.backbone
    summary = read_summary(clf.run_dir)
    test = summary.test if summary else None
    accuracy = (
        f"test accuracy {test.accuracy:.4f} on {test.images} photos"
        if test is not None
        else "test accuracy not recorded"
    )
    width = f" (alpha {spec.alpha:g})" if backbone.has_alpha else ""
    pretrained = backbone.pretrained and spec.weights.lower() != "none"
    return ModelCard(
        name=f"{run} ({backbone.name}{width}, {PRECISION[fmt]})",
        description=(
            f"{len(clf.labels)}-class image classifier: {backbone.name}{width} at "
            f"{spec.size} px, fine-tuned on the data set {cfg.data.dataset}; {accuracy} "
            f"(run {run}, make evaluate's split); {PRECISION[fmt]} TFLite from make export. "
            "Input: RGB pixels in [0, 255], the evaluation crop being a centred square of "
            f"{cfg.input.eval_crop_fraction:g} of the shorter side"
        ),
        version=run,
        author="make export (transfer-learning pipeline)",
        license=(
            f"Pretrained weights: {backbone.weights_licence}"
            if pretrained
            else "No pretrained weights: trained from random initialisation"
        ),
        labels=clf.labels,
        image_size=spec.size,
        **_unknown_card(unknown),
    )


def _unknown_card(detector: UnknownDetector | None) -> dict[str, Any]:
    """The ModelCard's fields for the unknown_score output; none without a detector."""
    if detector is None:
        return {}
    return {
        "unknown_threshold": detector.threshold,
        "unknown_rate": detector.rate,
        "unknown_k": detector.k,
    }


def tflite_figures(
    clf: Classifier,
    path: Path,
    rows: list,
    probabilities: np.ndarray,
    detector: UnknownDetector | None,
    got: np.ndarray | None,
    keras_scores: np.ndarray | None,
) -> ModelFigures:
    """A .tflite file's identity (what load_classifier checks it against), its
    unknown_score output on ``rows`` (``got``) at its own threshold (``detector``; None:
    the file has no such output) against the Keras model's scores (``keras_scores``), its
    metadata and the runtimes it was checked against."""
    figures = file_record(path, clf.labels, clf.cfg.image_size)
    flags, figures["unknown"] = None, None
    if detector is not None and got is not None and keras_scores is not None:
        figures["unknown"] = unknown_figures(detector, got, clf.unknown, keras_scores)
        flags = detector.flags(got)
    return {**figures, **check_runtimes(clf, path, rows, probabilities, flags)}


def unknown_figures(
    detector: UnknownDetector,
    got: np.ndarray,
    keras_detector: UnknownDetector,
    keras_scores: np.ndarray,
) -> UnknownFigures:
    """A file's unknown scores on the test photos (``got``), flagged at its own threshold
    (``detector``), against the Keras model's (``keras_scores`` at the run's threshold): the
    share flagged by each, how many flags agree, the largest score difference."""
    flags, reference = detector.flags(got), keras_detector.flags(keras_scores)
    return {
        "threshold": detector.threshold,
        "rate": detector.rate,
        "keras_threshold": keras_detector.threshold,
        "validation_scores": [float(x) for x in detector.val_scores],
        "flagged": float(flags.mean()),
        "keras_flagged": float(reference.mean()),
        "flag_agreement": float(np.mean(flags == reference)),
        "max_score_difference": float(np.abs(got - keras_scores).max()),
    }


def check_runtimes(
    clf: Classifier,
    path: Path,
    rows: list,
    probabilities: np.ndarray,
    flags: np.ndarray | None = None,
) -> ModelFigures:
    """The file's metadata read back (its labels must be the run's, in order) and the
    runtimes it was checked against: this project's interpreter (the scoring above, its
    unknown ``flags`` where the file has that output) and MediaPipe's ImageClassifier where
    mediapipe is installed (``pipeline.export.runtimes``)."""
    from pipeline.export.runtimes import interpreter_name, mediapipe_figures, mediapipe_version

    embedded = read_metadata(path.read_bytes())
    if embedded is None or embedded.labels != clf.labels:
        found = "no metadata" if embedded is None else f"the labels {embedded.labels}"
        raise ValueError(
            f"{path}: its TFLite metadata holds {found}, not the run's {clf.labels}; "
            f"export the run again with make export RUN={clf.run_dir.name}"
        )
    height, width = embedded.image_size
    runtimes = [interpreter_name()]
    mediapipe = None
    if mediapipe_version():
        mediapipe = mediapipe_figures(
            path,
            [r.path for r in rows],
            clf.labels,
            clf.cfg.input.eval_crop_fraction,
            probabilities.argmax(axis=1),
            flags,
        )
        runtimes.append(mediapipe["runtime"])
    return {
        "metadata": {
            "labels": len(embedded.labels),
            "input": (
                f"{embedded.color_space} {height}x{width} float32, mean {embedded.mean[0]:g} "
                f"std {embedded.std[0]:g} (raw pixels in [0, 255])"
            ),
            "output": (
                "probabilities"
                if embedded.unknown_threshold is None
                else f"probabilities; unknown_score, threshold {embedded.unknown_threshold:.6g}"
            ),
            "runtimes": runtimes,
        },
        "mediapipe": mediapipe,
    }


def _file_scores(model: TFLiteModel, clf: Classifier, rows: list) -> np.ndarray:
    """A file's own unknown scores on ``rows`` (evaluation crops) through the interpreter."""
    batches = clf.eval_dataset(rows, preprocessed=False)
    return np.concatenate([model.scored(b.numpy())[1] for b in batches]).astype(np.float64)


def file_detector(clf: Classifier, flatbuffer: bytes, val_rows: list) -> UnknownDetector:
    """The run's detector with the threshold set again on one converted file's own scores of
    the run's validation photos (``val_rows``): the rate the run chose, for this file.
    Rounding (float16 weights, int8 arithmetic) moves every score a little, int8's mostly
    up, so the run's threshold would flag more of a file's photos than the rate says."""
    if not val_rows:
        raise ValueError(f"{clf.run_dir}: no validation photos to set the unknown threshold on")
    return clf.unknown.set_on(_file_scores(TFLiteModel(content=flatbuffer), clf, val_rows))


def _memory_estimate(clf: Classifier) -> Any:
    """The MemoryEstimate the training run recorded, else one made now; None if neither."""
    from pipeline.memory import run_memory_estimate

    summary = read_summary(clf.run_dir)
    recorded = summary.memory.estimate if summary else None
    return recorded or run_memory_estimate(clf.cfg, len(clf.labels)).estimate


# ----------------------------------------------------------------------------- converting


def write_variants(
    clf: Classifier,
    formats: tuple[str, ...],
    options: ExportConfig,
    out: Path,
    val_rows: list | None = None,
) -> tuple[dict[str, Path], dict[str, UnknownDetector]]:
    """Each format's file under ``out``, written atomically; all converted from one
    SavedModel whose `serve` holds the preprocessing, so every variant takes raw pixels.
    With the unknown_score output, each .tflite file's own detector, its threshold set on
    ``val_rows`` (``file_detector``)."""
    serving = out / f".serving.partial-{os.getpid()}"
    shutil.rmtree(serving, ignore_errors=True)
    files, detectors = {}, {}
    scored = _with_unknown(clf, options)
    try:
        _write_serving(clf, serving)
        for fmt in (f for f in formats if f != "saved_model"):
            calibration = _calibration(clf, options.calibration_images) if "int8" in fmt else None
            flatbuffer = convert(serving, fmt, calibration, scored)
            if scored:
                detectors[fmt] = file_detector(clf, flatbuffer, val_rows or [])
            flatbuffer = with_metadata(flatbuffer, model_card(clf, fmt, detectors.get(fmt)))
            files[fmt] = atomic_write_bytes(out / VARIANT_FILES[fmt], flatbuffer)
        if "saved_model" in formats:  # the converters' source itself, moved into place whole
            files["saved_model"] = out / VARIANT_FILES["saved_model"]
            replace_dir(serving, files["saved_model"])
    finally:
        shutil.rmtree(serving, ignore_errors=True)
    for path in files.values():
        print(f"  {path.name:<20} {_size(path) / 2**20:7.2f} MiB")
    return files, detectors


def _write_serving(clf: Classifier, path: Path) -> None:
    """The Keras model behind `serve` (raw pixels) and `serve_bytes` (encoded images), as
    the train stage's SavedModel."""
    from pipeline.model import serving_archive

    fraction = clf.cfg.input.eval_crop_fraction
    archive = serving_archive(clf.model, clf.spec.backbone, clf.labels, fraction, clf.unknown)
    archive.write_out(str(path), verbose=False)


def convert(
    saved_model: Path,
    fmt: str,
    calibration: Callable[[], Iterator[list[np.ndarray]]] | None,
    scored: bool = False,
) -> bytes:
    """One TFLite flatbuffer, from `serve` or, ``scored``, from `serve_scored` (the
    unknown_score output too). int8 is full-integer (every op int8, conversion fails
    otherwise) with float32 input and outputs kept, so callers feed pixels as for fp32."""
    import tensorflow as tf

    from pipeline.model import SCORED_ENDPOINT, SERVE_ENDPOINT

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[SCORED_ENDPOINT if scored else SERVE_ENDPOINT]
    )
    if fmt == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with stderr_without(QUANTISER_NOTICE):  # C++ noise: pipeline/quiet.py
        return converter.convert()


def _calibration(clf: Classifier, count: int) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Up to ``count`` training images of the run's recorded split, drawn at random (seed
    train.seed) across classes, through the evaluation crop as raw pixels, one per batch."""
    from pipeline.data.provenance import load_run_data

    train = load_run_data(clf.run_dir).rows("train")
    rng = np.random.default_rng(clf.cfg.train.seed)
    pick = sorted(rng.choice(len(train), size=min(count, len(train)), replace=False))
    ds = clf.eval_dataset([train[i] for i in pick], batch_size=1, preprocessed=False)

    def representative() -> Iterator[list[np.ndarray]]:
        for x in ds:
            yield [x.numpy()]

    return representative


def _predictor(fmt: str, path: Path) -> Predictor:
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # referenced: its variables must stay alive
        return lambda pixels: loaded.serve(tf.constant(pixels, tf.float32)).numpy()
    return TFLiteModel(path)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ----------------------------------------------------------------------------- figures


def _export_json(
    clf: Classifier,
    out: Path,
    test_images: int,
    options: ExportConfig,
    scores: dict[str, ModelFigures],
    files: dict[str, Path],
) -> ExportRecord:
    """This export's figures, keeping those of earlier variants whose files remain (an
    int8-only export after a full one leaves the float32 figures in place)."""
    from pipeline.predict.tflite import cpu_threads

    earlier = read_export_record(out)
    variants = {
        fmt: figures
        for fmt, figures in (earlier["variants"] if earlier else {}).items()
        if fmt not in files and _still_there(out, figures)
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
            f"CPU, {cpu_threads()} threads; batch 1: mean of {options.latency_images} images, "
            f"batch 32: mean of {max(3, -(-options.latency_images // 32))} batches"
        ),
        "max_drop": options.max_drop,
        "keras": scores["keras"],
        "variants": dict(sorted(variants.items(), key=lambda kv: list(VARIANT_FILES).index(kv[0]))),
        "warnings": [],
    }


def _still_there(out: Path, figures: ModelFigures) -> bool:
    """An earlier variant's figures stay while its file does, unchanged (its sha256, for a
    .tflite), and they hold every figure this version records."""
    path = out / figures.get("file", "")
    if not figures.get("file") or not path.exists() or "latency_ms_b32" not in figures:
        return False
    return path.is_dir() or figures.get("sha256") == file_sha256(path)


def refresh_report(report_dir: Path, figures: ExportRecord) -> Path | None:
    """Put the export table into the run's existing HTML report (make evaluate's), in place
    of an earlier one; None when the run has no report yet (evaluate will add it)."""
    from pipeline.evaluate.report import with_export_section
    from pipeline.evaluate.stage import REPORT_FILE
    from pipeline.files import atomic_write_text

    path = report_dir / REPORT_FILE
    with exclusive(report_dir, f"make export RUN={figures['run']}", wait=True):
        if not path.is_file():
            return None
        atomic_write_text(path, with_export_section(path.read_text(encoding="utf-8"), figures))
    return path
