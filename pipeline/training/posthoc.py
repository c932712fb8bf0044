"""What a finished run learns about its own outputs, on the chief, before the model is
saved: the temperature that calibrates its confidence (``pipeline.evaluate.calibration``,
folded into the head) and the unknown-photo detector (``pipeline.predict.unknown``).

Both come from one pass of the kept model over the validation photos' evaluation view
(their pooled features; the head's logits are computed from those), plus one over the
training photos for the detector's neighbours. A run that kept phase 1 has the pretrained
base, whose features phase 1 cached: both passes are then read from the cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax_with_temperature,
    temperature_log_loss,
)
from pipeline.model import fold_temperature, head_logits
from pipeline.predict.unknown import UNKNOWN_FILE, fit_detector, save_detector
from pipeline.summary import Calibration, UnknownRecord
from pipeline.training.context import TrainingRun
from pipeline.training.features import reuse_or_extract


def fit_after_training(
    run: TrainingRun,
) -> tuple[Calibration, UnknownRecord | None, list[Path]]:
    """Calibrate ``run.classifier`` in place and, on the chief, store its detector; returns
    the summary's two records and the files written. Every worker of a multi-worker run
    folds the same temperature (the same weights and validation photos give the same T), so
    their saved models stay identical; the detector is the chief's alone, like the
    SavedModel. Without validation photos neither can be fitted: one line says so."""
    cfg, model = run.cfg, run.classifier
    if not run.val_rows:
        print("Calibration and unknown-photo detector skipped: the run has no validation photos")
        return Calibration(1.0, 0, skipped="no validation photos"), None, []
    start = time.perf_counter()
    batch = cfg.input.batch_size

    def features(rows, split):
        return reuse_or_extract(model, rows, cfg, run.backbone, batch, f"{split} features")

    val_features = features(run.val_rows, "Validation")
    y_val = np.array([r.label_index for r in run.val_rows])
    calibration = calibrate(model, val_features, y_val)
    if not run.chief:
        return calibration, None, []
    train_features = features(run.train_rows, "Training")
    detector = fit_detector(train_features, val_features, cfg.predict.unknown_rate)
    path = save_detector(run.work_dir / UNKNOWN_FILE, detector)
    unknown = UnknownRecord(
        file=UNKNOWN_FILE,
        k=detector.k,
        rate=detector.rate,
        threshold=detector.threshold,
        train_images=len(train_features),
        val_images=len(val_features),
    )
    print(
        f"Unknown-photo detector: cosine distance to the {detector.k}th nearest of "
        f"{len(train_features)} training photos, flagged above {detector.threshold:.4f} "
        f"({100 * detector.rate:g}% of validation photos) ({time.perf_counter() - start:.0f}s "
        "with calibration)"
    )
    return calibration, unknown, [path]


def calibrate(model, val_features: np.ndarray, y_val: np.ndarray) -> Calibration:
    """Fit T on validation's logits, fold it into ``model``'s head and say what it did; T = 1
    (with the reason) when validation holds a single class, where a lower loss is had by
    ever more confidence and T says nothing about new photos."""
    if len(np.unique(y_val)) < 2:
        print("Calibration skipped: the validation photos are all of one class (T = 1)")
        return Calibration(1.0, len(y_val), skipped="validation photos of a single class")
    logits = head_logits(model, val_features)
    temperature = fit_temperature(logits, y_val)
    before, after = (softmax_with_temperature(logits, t) for t in (1.0, temperature))
    calibration = Calibration(
        temperature=temperature,
        images=len(y_val),
        val_loss_before=temperature_log_loss(logits, y_val, 1.0),
        val_loss_after=temperature_log_loss(logits, y_val, temperature),
        ece_before=expected_calibration_error(y_val, before),
        ece_after=expected_calibration_error(y_val, after),
    )
    fold_temperature(model, temperature)
    print(
        f"Calibration: temperature {temperature:.3f} fitted on {len(y_val)} validation photos "
        f"(log loss {calibration.val_loss_before:.4f} -> {calibration.val_loss_after:.4f}, "
        f"ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}); folded into the "
        "model's head, so every output of the run is calibrated"
    )
    return calibration
