"""The images a run trains on and what they imply: the split recorded in the run folder,
the global batch, and the class weights."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from pipeline.config import Config
from pipeline.data.manifest import CLASSES_FILE
from pipeline.data.provenance import RUN_DATA_DIR, RunData, load_run_data, record_run_data
from pipeline.data.stage import ensure_manifests

IMBALANCE_RATIO = 1.5  # class_weights=auto weights classes when largest/smallest exceeds this


def run_split(cfg: Config, work_dir: Path, resumed: bool) -> RunData:
    """The split this run trains on, recorded in its folder (models/<run>/data/).

    A new run takes the data stage's manifests for cfg, rebuilt first when they are
    missing or stale (``ensure_manifests``); a resumed run keeps the split it started on.
    """
    if resumed and (work_dir / RUN_DATA_DIR).is_dir():
        run_data = load_run_data(work_dir)
        print(f"Resuming on the split this run started on ({run_data.folder}/)")
    else:
        record_run_data(ensure_manifests(cfg), work_dir)
        run_data = load_run_data(work_dir)
    train_rows, val_rows = run_data.rows("train"), run_data.rows("val")
    if not train_rows or not val_rows:
        raise ValueError(
            f"{run_data.folder}: the train or val manifest is empty ({len(train_rows)} / "
            f"{len(val_rows)} images); add images or raise data.val_fraction, then `make data`"
        )
    if len(run_data.classes) < 2:
        raise ValueError(
            f"{run_data.folder}/{CLASSES_FILE} lists {len(run_data.classes)} class; need 2 or more"
        )
    missing = [r.path for r in (*train_rows, *val_rows) if not os.path.isfile(r.path)]
    if missing:
        raise ValueError(
            f"{len(missing)} training or validation image(s) of this run are gone since "
            f"`make data` (first: {missing[0]}): restore them, or start a new run (another "
            "RUN_NAME), which checks the data again"
        )
    return run_data


def global_batch(per_replica: int, replicas: int, train_images: int) -> int:
    """input.batch_size per replica, times the replicas; at most the training set."""
    if train_images < replicas:
        raise ValueError(
            f"{train_images} training images cannot feed {replicas} replicas; use fewer "
            "devices or more images"
        )
    wanted = per_replica * replicas
    fitted = min(wanted, train_images // replicas * replicas)
    if fitted < wanted:
        print(f"Global batch lowered from {wanted} to {fitted}: only {train_images} images")
    return fitted


def class_balance(
    labels: Sequence[int], num_classes: int, mode: str
) -> tuple[list[float] | None, str]:
    """train.class_weights decided: the per-class loss weights (or None) and the line that
    reports them.

    'on' weighs every class n / (k * n_c) (scikit-learn's 'balanced'); 'auto' does so only
    when the largest class holds more than IMBALANCE_RATIO times the smallest. The data
    stage guarantees every class has training images.
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    ratio = counts.max() / max(counts.min(), 1)
    weights = None
    if mode == "on" or (mode == "auto" and ratio >= IMBALANCE_RATIO):
        classes = np.arange(num_classes)
        weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels)).tolist()
    if weights is None:
        return None, f"Class weights: off (largest/smallest class: {ratio:.2f}x)"
    shown = ", ".join(f"{w:.2f}" for w in weights[:10]) + (", ..." if len(weights) > 10 else "")
    return weights, f"Class weights: on (largest/smallest class: {ratio:.2f}x): {shown}"


def class_weights(labels: Sequence[int], num_classes: int, mode: str) -> list[float] | None:
    """Per-class loss weights n / (k * n_c) (scikit-learn's 'balanced'), or None.

    >>> class_weights([0, 0, 0, 1], 2, "auto")
    [0.6666666666666666, 2.0]
    >>> class_weights([0, 1], 2, "auto") is None
    True
    """
    return class_balance(labels, num_classes, mode)[0]
