"""The callbacks a phase runs with: the history writer, the best checkpoint, early stopping,
learning-rate reduction, TensorBoard, and the per-epoch backup that carries their state
across a restart (``pipeline.compat.StatefulBackup``; ``RESUMABLE_STATE`` says what)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from pipeline.compat import StatefulBackup
from pipeline.files import atomic_path, write_csv
from pipeline.runs import HISTORY_FILE
from pipeline.training.context import TrainingRun

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "phase_epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "images_per_s",
)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch of every phase so far (the exact head's counts as one)."""
    write_csv(path, HISTORY_COLUMNS, ([row[c] for c in HISTORY_COLUMNS] for row in rows))


class HistoryWriter(keras.callbacks.Callback):
    """history.csv with every phase's epochs, rewritten atomically after each epoch."""

    def __init__(
        self, path: Path, phase: int, earlier: list[dict[str, Any]], images_per_epoch: int
    ):
        super().__init__()
        self.path, self.phase, self.earlier = path, phase, list(earlier)
        self.images_per_epoch = images_per_epoch
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = self._batches_start = self._batches_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._batches_start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if not self._batches_start:
            self._batches_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._batches_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train_seconds = max(self._batches_end - self._batches_start, 1e-9)
        self.rows.append(
            {
                "epoch": len(self.earlier) + len(self.rows) + 1,
                "phase": self.phase,
                "phase_epoch": epoch + 1,
                **{
                    k: float(logs[k])
                    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
                },
                "seconds": time.perf_counter() - self._epoch_start,
                "images_per_s": self.images_per_epoch / train_seconds,
            }
        )
        write_history(self.path, self.earlier + self.rows)


class BestCheckpoint(keras.callbacks.Callback):
    """The whole classifier's weights at its lowest val_loss so far, saved atomically,
    even while phase 1 trains only the head (on cached features)."""

    def __init__(self, classifier: keras.Model, path: Path):
        super().__init__()
        self.classifier, self.path = classifier, path
        self.best, self.best_epoch = math.inf, -1

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get("val_loss", math.nan))
        if value < self.best:
            self.best, self.best_epoch = value, epoch
            with atomic_path(self.path, suffix=".weights.h5") as tmp:
                self.classifier.save_weights(tmp)


# What each callback must remember across a restart, besides the weights and the epoch.
RESUMABLE_STATE: dict[type, tuple[str, ...]] = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    BestCheckpoint: ("best", "best_epoch"),
    HistoryWriter: ("rows",),
}


def resumable_fields(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    return next(f for kind, f in RESUMABLE_STATE.items() if isinstance(callback, kind))


@dataclass
class PhaseCallbacks:
    """A phase's callbacks, in the order ``fit`` drives them (``all``), and the three whose
    results the phase reads afterwards."""

    history: HistoryWriter
    best: BestCheckpoint
    stop: keras.callbacks.EarlyStopping
    all: list[keras.callbacks.Callback]


def phase_callbacks(
    run: TrainingRun, phase: int, lr: float, images_per_epoch: int, plateau: bool = True
) -> PhaseCallbacks:
    """history.csv, the best checkpoint, early stopping and (``plateau``: for a fixed rate,
    not a schedule) plateau reduction on val_loss, TensorBoard when asked, and the backup
    last, so that on_train_begin restores the others' state after they reset it."""
    t, verbose = run.cfg.train, run.verbose
    history = HistoryWriter(run.work_dir / HISTORY_FILE, phase, run.history, images_per_epoch)
    best = BestCheckpoint(run.classifier, run.checkpoint_path(phase))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=t.patience,
        restore_best_weights=False,
        verbose=min(verbose, 1),
    )
    tracked: list[keras.callbacks.Callback] = [history, best, stop]
    if plateau:
        tracked.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=t.lr_factor,
                patience=t.lr_patience,
                min_lr=lr * 1e-3,
                verbose=min(verbose, 1),
            )
        )
    callbacks = list(tracked)
    if t.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(run.work_dir / "logs" / f"phase{phase}"),
                write_graph=False,
                profile_batch=0,
            )
        )
    callbacks.append(StatefulBackup(run.backup_dir(phase), tracked, resumable_fields))
    return PhaseCallbacks(history, best, stop, callbacks)
