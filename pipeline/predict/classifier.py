"""A trained run ready to classify files: its model (Keras, or an exported .tflite file),
labels and input configuration; the small API behind `make evaluate`, `make predict` and
`make export`.

    from pipeline.predict.classifier import load_classifier
    clf = load_classifier("flowers-inception_v3-20261122-101500")   # or () for the newest
    clf.classify(["photo.jpg"])[0]["predicted"]                     # -> 'tulips'

Every image goes through the same check, decoding and preprocessing as evaluation
(``pipeline.inputs.build_eval_dataset``), so a photo gets the same answer in both. An
exported file works too, ``load_classifier("models/<run>/export/model_int8.tflite")``: it
takes the same crops as raw pixels, its preprocessing being inside.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, load_config
from pipeline.data.manifest import CLASSES_FILE, ManifestRow, read_classes
from pipeline.data.provenance import RUN_DATA_DIR
from pipeline.images import ImageCheck, check_images
from pipeline.predict.stream import prediction_columns
from pipeline.predict.tflite import TFLITE_SUFFIX
from pipeline.predict.unknown import (
    UNKNOWN_COLUMNS,
    UNKNOWN_FILE,
    UnknownDetector,
    load_detector,
    unknown_cells,
)
from pipeline.runs import CONFIG_FILE, LABELS_FILE, MODEL_FILE, resolve_run


@dataclass
class Classifier:
    """A trained run, ready to classify files: its model, labels and input configuration.

    ``predict_batch`` maps a batch of evaluation crops to probabilities; they come
    preprocessed for the Keras model, as raw pixels (``raw_pixels``) for an exported file.
    A run with an unknown-photo detector (``unknown``) also has ``scored_batch``, one pass
    giving the probabilities and each photo's unknown score: from the pooled features the
    detector scores (Keras), or from the file's second output (an exported file carrying
    the detector), flagged at the file's own threshold (set at export on its validation
    scores).
    """

    run_dir: Path
    cfg: Config
    labels: list[str]
    model: Any = field(repr=False)  # keras.Model, or a pipeline.predict.tflite.TFLiteModel
    predict_batch: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    raw_pixels: bool = False
    unknown: UnknownDetector | None = None  # ood.npz; None for an old run, or a file without
    scored_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False
    )

    def predict_scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One batch's probabilities and unknown scores (None without a detector), from
        one pass of the model."""
        if self.unknown is None or self.scored_batch is None:
            return np.asarray(self.predict_batch(x)), None
        probs, scores = self.scored_batch(x)
        return np.asarray(probs), np.asarray(scores, np.float64)

    def without_unknown_reason(self) -> str:
        """Why this classifier leaves unknown_score empty ("" when it does not)."""
        if self.unknown is not None:
            return ""
        if self.raw_pixels and (self.run_dir / UNKNOWN_FILE).is_file():
            return (
                f"unknown_score and unknown are left empty: {self.model.path} has no "
                "unknown_score output (exported with export.unknown=false, or before files "
                f"carried it); export the run again with make export RUN={self.run_dir.name}"
            )
        return (
            f"unknown_score and unknown are left empty: {self.run_dir.name} has no "
            f"{UNKNOWN_FILE} (trained before the unknown-photo detector); retrain it to get them"
        )

    def set_unknown_rate(self, rate: float) -> None:
        """Flag at ``rate`` (predict.unknown_rate) rather than the rate the run was trained
        with: the threshold is recomputed from the run's stored validation scores."""
        if self.unknown is None or rate == self.unknown.rate:
            return
        trained = self.unknown
        self.unknown = trained.with_rate(rate)
        print(
            f"predict.unknown_rate={rate:g} differs from the run's {trained.rate:g}: unknown "
            f"threshold {self.unknown.threshold:.4f} (was {trained.threshold:.4f}), set on the "
            f"same {len(trained.val_scores)} validation photos"
        )

    @cached_property
    def spec(self) -> Any:
        """The run's ``ClassifierSpec``: its backbone's row and input size, resolved once."""
        from pipeline.model import classifier_spec

        return classifier_spec(self.cfg)

    def eval_dataset(
        self, rows: list[ManifestRow], batch_size: int | None = None, preprocessed: bool = True
    ) -> Any:
        """The rows' evaluation crops as this classifier takes them: preprocessed for a Keras
        model, raw pixels for an exported file (or whenever ``preprocessed`` is False)."""
        from pipeline.inputs import build_eval_dataset

        backbone = self.spec.backbone if preprocessed and not self.raw_pixels else None
        return build_eval_dataset(
            rows,
            self.cfg.input,
            self.spec.size,
            backbone=backbone,
            batch_size=batch_size or self.cfg.input.batch_size,
        )

    def probabilities(
        self, rows: list[ManifestRow], batch_size: int | None = None, tta: str = "none"
    ) -> np.ndarray:
        """Softmax outputs for checked rows, in row order, through the evaluation pipeline.

        ``tta="flip"`` averages each image's probabilities with its mirror image's (twice
        the model's work). Shows a progress bar on stderr when that is a terminal;
        otherwise (a log) one line.
        """
        return self.scored(rows, batch_size, tta)[0]

    def scored(
        self, rows: list[ManifestRow], batch_size: int | None = None, tta: str = "none"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``probabilities`` and, from the same pass, each row's unknown score (None without
        a detector). The score is the photo's own view's: with ``tta="flip"`` only the
        probabilities are averaged, as the threshold was set on unmirrored photos."""
        from tqdm import tqdm

        if not rows:
            empty = np.zeros(0) if self.unknown is not None else None
            return np.zeros((0, len(self.labels)), np.float32), empty
        batch = batch_size or self.cfg.input.batch_size
        ds = self.eval_dataset(rows, batch)
        bar = tqdm(
            total=len(rows),
            desc="Running the model",
            unit="img",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            leave=True,
        )
        if bar.disable:
            batches = math.ceil(len(rows) / batch)
            print(
                f"Running the model on {len(rows)} images "
                f"({batches} batch{'es' if batches != 1 else ''} of {batch})"
            )
        outputs, scores = [], []
        with bar:
            for batch_images in ds:
                x = batch_images.numpy()
                probs, score = self.predict_scored(x)
                if tta == "flip":
                    mirrored = x[:, :, ::-1]  # (batch, height, width, channels)
                    probs = (probs + np.asarray(self.predict_batch(mirrored))) / 2
                outputs.append(probs)
                scores.append(score)
                bar.update(len(outputs[-1]))
        probs = np.concatenate(outputs).astype(np.float64)
        return probs, None if self.unknown is None else np.concatenate(scores)

    def classify(
        self, paths: list[str | Path], top_k: int = 3, tta: str = "none"
    ) -> list[dict[str, Any]]:
        """One row per path, like the CSV: unreadable files come back with their reason."""
        checks = check_images(
            paths, self.cfg.data.min_side, self.cfg.data.max_pixels, progress=False
        )
        return classify_checked(self, checks, top_k, tta)


def load_classifier(run: str | Path = "", models_dir: str | Path = "models") -> Classifier:
    """A run by name or folder (newest when empty), or an exported models/<run>/export/*.tflite."""
    if str(run).endswith(TFLITE_SUFFIX):
        return _load_exported(Path(run))
    run_dir, cfg, labels = read_run(run, models_dir)
    model = _load_model(run_dir / MODEL_FILE)
    outputs = model.output_shape[-1]
    if outputs != len(labels):
        raise ValueError(
            f"{run_dir / LABELS_FILE} lists {len(labels)} classes but {run_dir / MODEL_FILE} "
            f"outputs {outputs}: they are not from the same run. Restore the run's own "
            f"{LABELS_FILE} (its class names, in output order) or retrain the run"
        )
    detector = load_detector(run_dir)
    if detector is None:
        return Classifier(run_dir, cfg, labels, model, model.predict_on_batch)
    return Classifier(
        run_dir,
        cfg,
        labels,
        model,
        model.predict_on_batch,
        False,
        detector,
        _scored(model, detector),
    )


def _scored(
    model: Any, detector: UnknownDetector
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Pixels -> (probabilities, unknown scores) in one pass of the classifier."""
    from pipeline.model import build_scored_model

    both = build_scored_model(model)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, features = both.predict_on_batch(x)
        return np.asarray(probs), detector.scores(features)

    return run


def run_of_export(path: Path) -> Path:
    """The run an exported file belongs to: models/<run>/export/<file> -> models/<run>."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MODEL={path}: no such file; export the run first: make export RUN=<run> "
            "(it writes models/<run>/export/model_*.tflite)"
        )
    run_dir = path.absolute().parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"MODEL={path}: no {CONFIG_FILE} in {run_dir}; keep the file where `make export` "
            "wrote it, models/<run>/export/, inside its run folder"
        )
    return run_dir


def exported_file(run_dir: Path, fmt: str) -> Path:
    """What `make predict RUN=<run> FORMAT=<fmt>` classifies with: the run itself for the
    default FORMAT (all), else that format's file under models/<run>/export/."""
    from pipeline.export.record import EXPORT_DIR, VARIANT_FILES

    if fmt == "all":
        return run_dir
    if not VARIANT_FILES[fmt].endswith(TFLITE_SUFFIX):
        raise ValueError(
            f"FORMAT={fmt}: predict runs a .tflite file or the run itself; give FORMAT=tflite, "
            "tflite-fp16 or tflite-int8, or no FORMAT for the run's Keras model"
        )
    path = run_dir / EXPORT_DIR / VARIANT_FILES[fmt]
    if not path.is_file():
        raise FileNotFoundError(
            f"FORMAT={fmt}: {path} does not exist; export it first: make export "
            f"RUN={run_dir.name} FORMAT={fmt}"
        )
    return path


def _load_exported(path: Path) -> Classifier:
    """An exported .tflite file, checked against its run: image size and class count, then
    export.json's record of it (its sha256 and the labels it was exported with)."""
    from pipeline.export.record import verify_exported
    from pipeline.predict.tflite import TFLiteModel

    run_dir, cfg, labels = read_run(run_of_export(path))
    model = TFLiteModel(path)
    size = cfg.image_size
    if model.input_shape != (size, size, 3):
        h, w, c = model.input_shape
        raise ValueError(
            f"{path} takes {h}x{w}x{c} images but its run {run_dir.name} was trained at "
            f"{size}x{size}x3: it was exported from another run; export this one again with "
            f"make export RUN={run_dir.name}"
        )
    if model.outputs != len(labels):
        raise ValueError(
            f"{path} outputs {model.outputs} classes but {run_dir / LABELS_FILE} lists "
            f"{len(labels)}: it was exported from another run; export this one again with "
            f"make export RUN={run_dir.name}"
        )
    record = verify_exported(path, run_dir, labels, size)  # same shape, not same labels
    labels = embedded_labels(path, labels)
    detector = load_detector(run_dir) if model.has_unknown else None
    if detector is not None and record.get("unknown"):  # the file's own threshold
        detector = detector.set_on(record["unknown"]["validation_scores"])
    if detector is None:
        return Classifier(run_dir, cfg, labels, model, model, raw_pixels=True)
    return Classifier(run_dir, cfg, labels, model, model, True, detector, model.scored)


def embedded_labels(path: Path, labels: list[str]) -> list[str]:
    """The class names in the file's TFLite metadata (what it answers in), which must be its
    run's; ``labels`` for a file exported before files carried them."""
    from pipeline.export.metadata import read_metadata

    embedded = read_metadata(path.read_bytes())
    if embedded is None:
        return labels
    if embedded.labels != labels:
        raise ValueError(
            f"{path} names its classes {embedded.labels[:6]} in its metadata but its run's "
            f"{LABELS_FILE} lists {labels[:6]}: restore the run's {LABELS_FILE}, or export the "
            "run again with make export RUN=<run>"
        )
    return embedded.labels


def read_run(run: str | Path = "", models_dir: str | Path = "models") -> tuple[Path, Config, list]:
    """A run's folder, configuration and labels: everything but the model (fast, no TF)."""
    run_dir = resolve_run(models_dir, str(run))
    cfg = load_config(run_dir / CONFIG_FILE)
    path = run_dir / LABELS_FILE
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
        names = isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
        problem = "" if names else "is not a list of class names"
    except FileNotFoundError:
        problem = "is missing"
    except json.JSONDecodeError as exc:
        problem = f"is not valid JSON ({exc.msg}, line {exc.lineno})"
    if problem:
        raise ValueError(
            f"{path} {problem}; restore the run's own {LABELS_FILE} or retrain the run"
        )
    _check_recorded_classes(path, labels, run_dir / RUN_DATA_DIR / CLASSES_FILE)
    return run_dir, cfg, labels


def _check_recorded_classes(path: Path, labels: list[str], recorded: Path) -> None:
    """The labels name the model's outputs in order: a reordered or renamed list would label
    every image wrongly and silently, so it must match the classes the run trained on. (A
    list of another length is left to the check against the model's outputs.)"""
    if not recorded.is_file():
        return  # a run trained before splits were recorded: the count check is all there is
    classes = read_classes(recorded)
    if classes != labels and len(classes) == len(labels):
        detail = ", ".join(
            f"output {i} is {a!r}, not {b!r}"
            for i, (a, b) in enumerate(zip(classes, labels))
            if a != b
        )
        raise ValueError(
            f"{path} differs from the classes the run was trained on ({recorded}: {detail}); "
            f"restore the run's own {LABELS_FILE} (its class names, in output order)"
        )


def _load_model(path: Path) -> Any:
    """keras.saving.load_model, or one line saying the file is damaged (Keras says a
    truncated .keras file is "File not found", although it is there)."""
    import zipfile

    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # anything wrong inside the file: the message says what
        if not zipfile.is_zipfile(path):
            cause = "not a complete .keras zip archive"
        else:
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())
            cause = cause if len(cause) <= 200 else cause[:197] + "..."
        raise ValueError(
            f"{path} is not a readable Keras model (truncated or corrupt: {cause}); "
            "retrain the run or restore the file"
        ) from None


def rows_from_checks(checks: list[ImageCheck]) -> list[ManifestRow]:
    return [
        ManifestRow(c.path, "", -1, c.sha256, c.width, c.height, c.orientation, c.decoder)
        for c in checks
        if c.status == "ok"
    ]


def top_k_columns(k: int) -> list[str]:
    return [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_probability")]


def prediction_header(k: int) -> list[str]:
    """The CSV's columns (`make predict`, Beam): ``reason`` last, as the partial files need."""
    return [
        "path",
        "status",
        "predicted",
        "probability",
        *top_k_columns(k),
        *UNKNOWN_COLUMNS,
        "reason",
    ]


def classify_checked(
    clf: Classifier, checks: list[ImageCheck], top_k: int, tta: str = "none"
) -> list[dict]:
    top_k = min(top_k, len(clf.labels))
    ok = [c for c in checks if c.status == "ok"]
    probs, scores = clf.scored(rows_from_checks(ok), tta=tta)
    scores = [None] * len(ok) if scores is None else scores
    by_path = {c.path: (p, s) for c, p, s in zip(ok, probs, scores)}
    out = []
    for check in checks:
        row: dict[str, Any] = {"path": check.path, "status": check.status, "reason": check.reason}
        found = by_path.get(check.path)
        if found is not None:
            row.update(prediction_columns(clf.labels, found[0], top_k))
            row.update(unknown_cells(clf.unknown, found[1]))
        out.append(row)
    return sorted(out, key=lambda r: r["path"])
