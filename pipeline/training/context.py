"""``TrainingRun``: what the phases, the feeds and the outputs share, built once by
``train``, and where in the run folder each phase keeps its best weights and backup."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline.backbones import Backbone
from pipeline.config import Config
from pipeline.data.manifest import ManifestRow
from pipeline.model import ClassifierSpec
from pipeline.runs import BACKUP_DIR, CHECKPOINTS_DIR
from pipeline.summary import TrainState


@dataclass
class TrainingRun:
    cfg: Config
    strategy: tf.distribute.Strategy
    spec: ClassifierSpec  # the backbone's row, the input size, the model options
    work_dir: Path  # the run folder; a non-chief worker's own sub-folder
    chief: bool
    classes: list[str]
    train_rows: list[ManifestRow]
    val_rows: list[ManifestRow]
    test_rows: list[ManifestRow]  # scored for the summary only, never trained or selected on
    classifier: keras.Model
    global_batch: int
    class_weights: list[float] | None
    verbose: int
    state: TrainState  # state.json: the phases finished so far
    rss_before: int | None = None  # resident memory before anything was built
    history: list[dict[str, Any]] = field(default_factory=list)  # every phase's epochs

    @property
    def backbone(self) -> Backbone:
        return self.spec.backbone

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def checkpoint_path(self, phase: int) -> Path:
        """The classifier's weights at the phase's best epoch."""
        return self.work_dir / CHECKPOINTS_DIR / f"phase{phase}.weights.h5"

    def backup_dir(self, phase: int) -> Path:
        """The phase's per-epoch backup (removed once the phase is recorded finished)."""
        return self.work_dir / BACKUP_DIR / f"phase{phase}"
