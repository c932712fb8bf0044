"""The train stage (`make train`): two-phase transfer learning that resumes where it stopped.

Public entry: ``train(cfg) -> TrainResult``.

Phase 1 trains a new head on the frozen base, on cached pooled features when nothing is
augmented (``pipeline.features``). Phase 2 unfreezes the top of the base from the
backbone's cut point, BatchNorm layers still frozen, and continues from the best phase-1
weights at a low learning rate. Both phases stop early on validation loss and go back to
their best weights, lower the learning rate on plateaus, keep a best checkpoint and a CSV
history, and back their state up after every epoch (Keras ``BackupAndRestore``), so a run
killed mid-epoch continues from its last finished epoch when started again. Every strategy,
one device to several machines, goes through the same loop (``pipeline.distribute.fit``).
Everything is written atomically under models/<run>/.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.backbones import Backbone, get_backbone, preprocess
from pipeline.compat import StatefulBackup, op_determinism
from pipeline.config import (
    MULTI_WORKER_NEEDS_RUN_NAME,
    Config,
    ConfigError,
    dataset_name,
    save_config,
    with_overrides,
)
from pipeline.data import ensure_manifests
from pipeline.distribute import (
    Feed,
    describe_devices,
    eval_feed,
    fit,
    input_pipelines,
    multi_worker_requested,
    select_precision,
    select_strategy,
    strategy_name,
    train_feed,
    worker_role,
)
from pipeline.features import (
    feature_loader,
    frozen_train_dataset,
    image_loader,
    load_or_extract,
    ordered_dataset,
    weights_fingerprint,
)
from pipeline.files import atomic_path, generated_dir, replace_dir, write_csv, write_json
from pipeline.inputs import build_eval_dataset, build_train_dataset
from pipeline.manifest import CLASSES_FILE, ManifestRow
from pipeline.model import (
    build_classifier,
    build_feature_head,
    count_params,
    fine_tune_cut,
    freeze_for_phase,
    get_base,
    resolve_weights,
    training_forward,
)
from pipeline.provenance import (
    RUN_DATA_DIR,
    RunData,
    load_run_data,
    read_record,
    record_run_data,
)
from pipeline.runs import (
    CONFIG_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    STATE_FILE,
    SUMMARY_FILE,
)

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
IMBALANCE_RATIO = 1.5  # class_weights=auto weights classes when largest/smallest exceeds this
# Options that may change between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = ("train.run_name", "train.strategy", "train.xla", "train.tensorboard")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


@dataclass
class _Run:
    """What both phases share; built once by train()."""

    cfg: Config
    strategy: tf.distribute.Strategy
    backbone: Backbone
    work_dir: Path  # the run folder; a non-chief worker's own sub-folder
    chief: bool
    classes: list[str]
    train_rows: list[ManifestRow]
    val_rows: list[ManifestRow]
    classifier: keras.Model
    global_batch: int
    class_weights: list[float] | None
    verbose: int
    state: dict[str, Any]
    rss_before: int | None = None  # resident memory before anything was built
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- entry


def train(cfg: Config) -> TrainResult:
    """Train models/<run>/ from cfg: both phases, then the model, export and reports."""
    _check_config(cfg)
    strategy = select_strategy(cfg)  # first: multi-worker set-up must precede other TF work
    policy = keras.mixed_precision.global_policy()
    determinism_enabled, disable_determinism = op_determinism()
    determinism = cfg.train.deterministic and not determinism_enabled()
    try:
        return _train(cfg, strategy, _current_rss_bytes())
    finally:  # the stage leaves the process as it found it (tests run stages in-process)
        keras.mixed_precision.set_global_policy(policy)
        if determinism:
            disable_determinism()


def _check_config(cfg: Config) -> None:
    """What only this machine can answer, before anything is loaded. Every check that
    depends on the configuration alone is in ``config.validate``, which every stage runs;
    these depend on the environment, so a run's saved config.json stays loadable (for
    evaluate and predict) on a machine without TensorBoard or TF_CONFIG."""
    t = cfg.train
    if t.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package (a dependency since "
            "TensorFlow 2.20 stopped installing it): pip install tensorboard, or "
            "train.tensorboard=false"
        )
    if multi_worker_requested(cfg) and not t.run_name:  # strategy=auto reads TF_CONFIG
        raise ConfigError(MULTI_WORKER_NEEDS_RUN_NAME)


def _train(cfg: Config, strategy: tf.distribute.Strategy, rss_before: int | None) -> TrainResult:
    """``rss_before``: the process's resident memory before anything was built, reported
    beside the peak so that the difference between estimate and peak has a figure."""
    started = time.perf_counter()
    precision = select_precision(cfg)
    xla = cfg.train.xla
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
        cfg = with_overrides(cfg, {"input.deterministic": True})
        if xla:
            print("train.deterministic: XLA turned off (not every XLA kernel is deterministic)")
            xla = False
    backbone = get_backbone(cfg.model.backbone)
    weights = resolve_weights(backbone, cfg.model.weights, cfg.model.alpha, cfg.image_size)
    chief, role = worker_role(strategy)
    # Each worker writes its own folder; the chief's is the run folder itself.
    run_dir, cfg, resumed = _resolve_run_dir(cfg, "" if chief else f"workers/{role}")
    work_dir = run_dir if chief else run_dir / "workers" / role
    generated_dir(run_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_data = _load_manifests(cfg, work_dir, resumed)
    classes, train_rows, val_rows = run_data.classes, run_data.rows("train"), run_data.rows("val")
    save_config(cfg, work_dir / CONFIG_FILE)

    replicas = strategy.num_replicas_in_sync
    global_batch = _global_batch(cfg.input.batch_size, replicas, len(train_rows))
    labels = [r.label_index for r in train_rows]
    weights_per_class = class_weights(labels, len(classes), cfg.train.class_weights)
    keras.utils.set_random_seed(cfg.train.seed)
    with strategy.scope():
        classifier = build_classifier(cfg, len(classes), weights)

    print(
        f"Training {backbone.name} ({_weights_text(cfg, weights)}) on {cfg.data.dataset}: "
        f"{len(classes)} classes, {len(train_rows)} train / {len(val_rows)} val images at "
        f"{cfg.image_size}x{cfg.image_size}"
    )
    print(
        f"Device: {describe_devices(strategy)}. Precision {precision}"
        f"{', XLA' if xla else ''}. Global batch {global_batch} "
        f"({global_batch // replicas} per replica)."
    )
    print(_class_weights_text(labels, len(classes), weights_per_class))
    print(f"{'Resuming' if resumed else 'Run folder'}: {run_dir}")

    run = _Run(
        cfg=cfg,
        strategy=strategy,
        backbone=backbone,
        work_dir=work_dir,
        chief=chief,
        classes=classes,
        train_rows=train_rows,
        val_rows=val_rows,
        classifier=classifier,
        global_batch=global_batch,
        class_weights=weights_per_class,
        verbose=_verbosity() if chief else 0,
        state=_read_state(work_dir),
        rss_before=rss_before,
    )
    phases = {"1": _phase_one(run, xla)}
    if backbone.pretrained and cfg.train.fine_tune_epochs > 0:
        phases["2"] = _phase_two(run, xla)
    return _finish(run, phases, precision, xla, time.perf_counter() - started, resumed)


def _verbosity() -> int:
    return 1 if sys.stdout.isatty() else 2


# ----------------------------------------------------------------------------- inputs


def _load_manifests(cfg: Config, work_dir: Path, resumed: bool) -> RunData:
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


def _global_batch(per_replica: int, replicas: int, train_images: int) -> int:
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


def class_weights(labels: Sequence[int], num_classes: int, mode: str) -> list[float] | None:
    """Per-class loss weights n / (k * n_c) (scikit-learn's 'balanced'), or None.

    >>> class_weights([0, 0, 0, 1], 2, "auto")
    [0.6666666666666666, 2.0]
    >>> class_weights([0, 1], 2, "auto") is None
    True
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    ratio = counts.max() / max(counts.min(), 1)
    if mode == "off" or (mode == "auto" and ratio < IMBALANCE_RATIO):
        return None
    return (counts.sum() / (num_classes * np.maximum(counts, 1))).tolist()


def _class_weights_text(labels, num_classes: int, weights: list[float] | None) -> str:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    ratio = counts.max() / max(counts.min(), 1)
    if weights is None:
        return f"Class weights: off (largest/smallest class: {ratio:.2f}x)"
    shown = ", ".join(f"{w:.2f}" for w in weights[:10]) + (", ..." if len(weights) > 10 else "")
    return f"Class weights: on (largest/smallest class: {ratio:.2f}x): {shown}"


def _weights_text(cfg: Config, resolved: str | None) -> str:
    if not get_backbone(cfg.model.backbone).pretrained:
        return "trained from scratch"
    if resolved is None:
        return "random initialisation"
    return f"weights {resolved}"


# ----------------------------------------------------------------------------- run folder


def _flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}


def _config_differences(saved: Path, cfg: Config) -> list[str]:
    old = _flat(json.loads(saved.read_text(encoding="utf-8")))
    new = _flat(cfg.to_dict())
    return sorted(
        k
        for k in new
        if k not in RESUMABLE_CHANGES and not k.startswith("paths.") and old.get(k) != new[k]
    )


def _resolve_run_dir(cfg: Config, role_dir: str = "") -> tuple[Path, Config, bool]:
    """models/<run>: the named run, the newest unfinished run of the same configuration
    (resumed), or a new <dataset>-<backbone>-<time> folder. (run folder, cfg with the run
    name filled in, resumed?)"""
    models = Path(cfg.paths.models)
    name = cfg.train.run_name
    if name:
        run_dir = models / name
        own = run_dir / role_dir
        if (own / SUMMARY_FILE).is_file():
            raise ConfigError(
                f"{run_dir} holds a finished run; choose another RUN_NAME (train.run_name) "
                "or delete that folder to train it again"
            )
        saved = own / CONFIG_FILE
        if saved.is_file() and not _has_progress(own):
            print(f"{run_dir}: the earlier attempt stopped before its first epoch; starting afresh")
            return run_dir, cfg, False
        if saved.is_file():
            differences = _config_differences(saved, cfg)
            if differences:
                raise ConfigError(
                    f"{run_dir} is an unfinished run with other options ({', '.join(differences)}"
                    f"); rerun with its options ({saved}) to resume it, or choose another RUN_NAME"
                )
            return run_dir, cfg, True
        return run_dir, cfg, False
    prefix = f"{dataset_name(cfg.data.dataset)}-{cfg.model.backbone}-"
    for run_dir in sorted(models.glob(prefix + "*"), reverse=True):
        saved = run_dir / CONFIG_FILE
        if (
            saved.is_file()
            and not (run_dir / SUMMARY_FILE).is_file()
            and not _config_differences(saved, cfg)
        ):
            print(
                f"Found an unfinished run with the same options: {run_dir} (RUN_NAME=... "
                "starts a new one instead)"
            )
            return run_dir, with_overrides(cfg, {"train.run_name": run_dir.name}), True
    name = prefix + time.strftime("%Y%m%d-%H%M%S")
    return models / name, with_overrides(cfg, {"train.run_name": name}), False


def _has_progress(work_dir: Path) -> bool:
    """Whether a run folder holds a finished epoch worth resuming."""
    return (work_dir / STATE_FILE).is_file() or (work_dir / HISTORY_FILE).is_file()


def _read_state(work_dir: Path) -> dict[str, Any]:
    path = work_dir / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"phases": {}}


# ----------------------------------------------------------------------------- phases


def _restore_finished_phase(run: _Run, phase: int, done: dict[str, Any]) -> None:
    """A resumed run skips a finished phase: its best weights and history come back."""
    _load_checkpoint(run, phase)
    run.history.extend(done["history"])
    print(
        f"Phase {phase} finished earlier (best epoch {done['best_epoch']}); its best weights "
        "are loaded"
    )


def _phase_one(run: _Run, xla: bool) -> dict[str, Any]:
    """Frozen base, new head, at train.head_lr; a from-scratch network trains whole here."""
    cfg, t = run.cfg, run.cfg.train
    epochs = t.head_epochs
    if not run.backbone.pretrained:
        epochs = t.head_epochs + t.fine_tune_epochs
    done = run.state["phases"].get("1")
    freeze_for_phase(run.classifier, cfg, 1)
    if done is not None or epochs == 0:
        if done is not None:
            _restore_finished_phase(run, 1, done)
        return done or {"epochs": 0, "skipped": True}

    cached = run.backbone.pretrained and t.cache_features and not t.head_augment
    extra: dict[str, Any] = {}
    if cached:
        model, train, val, extra = _feature_feeds(run)
        what = "new head on cached features"
    elif run.backbone.pretrained:
        model, train, val = run.classifier, _image_train_feed(run, t.head_augment), _val_feed(run)
        what = "new head, " + (
            "augmented images" if t.head_augment else "the frozen base runs every epoch"
        )
    else:
        model, train, val = run.classifier, _image_train_feed(run, True), _val_feed(run)
        what = "the whole network from scratch, augmented images"
    trainable = count_params(run.classifier.trainable_variables)
    print(
        f"Phase 1: {what}; {trainable:,} trainable parameters, lr {t.head_lr:g}, "
        f"up to {epochs} epochs"
    )
    result = _run_phase(run, 1, model, train, val, epochs, t.head_lr, xla)
    result.update(extra, cached_features=cached)
    return _record_phase(run, 1, result)


def _phase_two(run: _Run, xla: bool) -> dict[str, Any]:
    """Top of the base unfrozen from the cut, BatchNorm frozen, at train.fine_tune_lr."""
    cfg, t = run.cfg, run.cfg.train
    freeze_for_phase(run.classifier, cfg, 2)
    done = run.state["phases"].get("2")
    if done is not None:
        _restore_finished_phase(run, 2, done)
        return done
    base = get_base(run.classifier)
    trainable_layers = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    print(
        f"Phase 2: fine-tuning the base after {fine_tune_cut(cfg)} ({len(trainable_layers)} "
        f"layers with weights, BatchNorm frozen): "
        f"{count_params(base.trainable_variables):,} of {count_params(base.weights):,} base "
        f"parameters train; lr {t.fine_tune_lr:g}, up to {t.fine_tune_epochs} epochs"
    )
    result = _run_phase(
        run,
        2,
        run.classifier,
        _image_train_feed(run, True),
        _val_feed(run),
        t.fine_tune_epochs,
        t.fine_tune_lr,
        xla,
    )
    result["first_trainable_layer"] = trainable_layers[0] if trainable_layers else None
    return _record_phase(run, 2, result)


def _record_phase(run: _Run, phase: int, result: dict[str, Any]) -> dict[str, Any]:
    """Mark the phase finished, then drop its backup (in this order: a kill in between
    leaves a finished phase, never a phase to redo from scratch)."""
    run.state["phases"][str(phase)] = result
    write_json(run.work_dir / STATE_FILE, run.state)
    shutil.rmtree(_backup_dir(run, phase), ignore_errors=True)
    return result


def _backup_dir(run: _Run, phase: int) -> Path:
    return run.work_dir / "backup" / f"phase{phase}"


def _checkpoint_path(run: _Run, phase: int) -> Path:
    return run.work_dir / "checkpoints" / f"phase{phase}.weights.h5"


def _load_checkpoint(run: _Run, phase: int) -> None:
    path = _checkpoint_path(run, phase)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing but {run.work_dir / STATE_FILE} says phase {phase} finished; "
            "delete the run folder to start it again"
        )
    run.classifier.load_weights(path)


def _run_phase(
    run: _Run,
    phase: int,
    model: keras.Model,
    train: Feed,
    val: Feed,
    epochs: int,
    lr: float,
    xla: bool,
) -> dict[str, Any]:
    cfg = run.cfg
    _compile(run, model, lr)
    images_per_epoch = train.steps * train.global_batch
    history = _HistoryWriter(run.work_dir / HISTORY_FILE, phase, run.history, images_per_epoch)
    best = _BestCheckpoint(run.classifier, _checkpoint_path(run, phase))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=cfg.train.patience,
        restore_best_weights=False,
        verbose=min(run.verbose, 1),
    )
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=cfg.train.lr_factor,
        patience=cfg.train.lr_patience,
        min_lr=lr * 1e-3,
        verbose=min(run.verbose, 1),
    )
    callbacks: list[keras.callbacks.Callback] = [history, best, stop, plateau]
    if cfg.train.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(run.work_dir / "logs" / f"phase{phase}"),
                write_graph=False,
                profile_batch=0,
            )
        )
    backup_dir = _backup_dir(run, phase)
    resuming = (backup_dir / "training_metadata.json").is_file()
    # Last, so that on_train_begin restores the others' state after they reset it.
    callbacks.append(StatefulBackup(backup_dir, [history, best, stop, plateau], _resumable_fields))
    if resuming:
        print(f"Phase {phase}: resuming from its backup in {backup_dir}")
    with run.strategy.scope():
        forward = training_forward(model, cfg) if model is run.classifier else None
    fit(
        model,
        train,
        val,
        epochs,
        callbacks,
        run.strategy,
        class_weights=run.class_weights,
        label_smoothing=cfg.train.label_smoothing,
        jit_compile=xla,
        verbose=run.verbose,
        label=f"phase {phase}",
        forward=forward,
    )
    if best.best_epoch < 0:
        raise RuntimeError(f"Phase {phase} ended without a finite validation loss to keep")
    run.classifier.load_weights(best.path)  # the best epoch's weights, kept on disk
    rows = history.rows
    best_row = rows[best.best_epoch]
    train_seconds = sum(images_per_epoch / r["images_per_s"] for r in rows)
    print(
        f"Phase {phase}: best epoch {best.best_epoch + 1} of {len(rows)} "
        f"(val_loss {best_row['val_loss']:.4f}, val_accuracy {best_row['val_accuracy']:.4f})"
        + ("; stopped early" if stop.stopped_epoch > 0 else "")
    )
    run.history.extend(rows)
    return {
        "epochs": len(rows),
        "best_epoch": best.best_epoch + 1,
        "best_val_loss": best_row["val_loss"],
        "best_val_accuracy": best_row["val_accuracy"],
        "stopped_early": stop.stopped_epoch > 0,
        "resumed": resuming,
        "optimizer": type(model.optimizer).__name__,  # LossScaleOptimizer under float16
        "learning_rate": lr,
        "final_learning_rate": rows[-1]["learning_rate"],
        "seconds": sum(r["seconds"] for r in rows),
        "train_images_per_s": len(rows) * images_per_epoch / max(train_seconds, 1e-9),
        "checkpoint": str(best.path),
        "history": rows,
    }


def _compile(run: _Run, model: keras.Model, lr: float) -> None:
    """Adam at lr, its state built now (saved state = loaded state). With train.ema > 0 it
    also keeps a moving average of the weights (Polyak averaging), which distribute.fit
    validates and checkpoints instead of the last step's weights."""
    t = run.cfg.train
    ema = {"use_ema": True, "ema_momentum": t.ema} if t.ema > 0 else {}
    with run.strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(lr, **ema),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
            metrics=["accuracy"],
        )
        model.optimizer.build(model.trainable_variables)


# ----------------------------------------------------------------------------- feeds


def _image_train_feed(run: _Run, augment: bool) -> Feed:
    """Augmented images (build_train_dataset), or the fixed evaluation view shuffled."""
    rows, cfg, k = run.train_rows, run.cfg, run.num_classes

    def build(indices: np.ndarray, batch: int, ctx) -> tf.data.Dataset:
        seed = cfg.train.seed + ctx.input_pipeline_id
        if augment:
            return build_train_dataset(
                [rows[i] for i in indices], cfg, k, seed=seed, batch_size=batch
            )
        return frozen_train_dataset(indices, batch, seed, image_loader(rows, cfg, k))

    return train_feed(len(rows), run.global_batch, build)


def _val_feed(run: _Run) -> Feed:
    rows, cfg, k = run.val_rows, run.cfg, run.num_classes

    def build(indices: np.ndarray, batch: int) -> tf.data.Dataset:
        return build_eval_dataset([rows[i] for i in indices], cfg, k, batch_size=batch)

    return eval_feed(len(rows), run.global_batch, run.strategy, build)


def _feature_feeds(run: _Run) -> tuple[keras.Model, Feed, Feed, dict[str, Any]]:
    """The head model and feeds of cached features (extracted once, then reused)."""
    cfg, k = run.cfg, run.num_classes
    fingerprint = weights_fingerprint(run.classifier)
    cached = {
        split: load_or_extract(run.classifier, rows, cfg, run.global_batch, fingerprint, split)
        for split, rows in (("train", run.train_rows), ("val", run.val_rows))
    }
    for split, c in cached.items():
        how = "reused" if c.reused else f"extracted in {c.seconds:.1f}s"
        print(f"Features of {len(c.features)} {split} images {how}: {c.path}")
    train_load = feature_loader(
        cached["train"].features, np.array([r.label_index for r in run.train_rows]), k
    )
    val_load = feature_loader(
        cached["val"].features, np.array([r.label_index for r in run.val_rows]), k
    )
    seed = cfg.train.seed
    train = train_feed(
        len(run.train_rows),
        run.global_batch,
        lambda idx, batch, ctx: frozen_train_dataset(
            idx, batch, seed + ctx.input_pipeline_id, train_load
        ),
    )
    val = eval_feed(
        len(run.val_rows),
        run.global_batch,
        run.strategy,
        lambda idx, batch: ordered_dataset(idx, batch, val_load),
    )
    with run.strategy.scope():
        head = build_feature_head(run.classifier)
    extra = {
        "feature_cache": {s: str(c.path) for s, c in cached.items()},
        "feature_cache_reused": all(c.reused for c in cached.values()),
        "feature_seconds": sum(c.seconds for c in cached.values()),
    }
    return head, train, val, extra


# ----------------------------------------------------------------------------- callbacks


class _HistoryWriter(keras.callbacks.Callback):
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
        write_csv(
            self.path,
            HISTORY_COLUMNS,
            ([row[c] for c in HISTORY_COLUMNS] for row in self.earlier + self.rows),
        )


class _BestCheckpoint(keras.callbacks.Callback):
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
_RESUMABLE_STATE: dict[type, tuple[str, ...]] = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    _BestCheckpoint: ("best", "best_epoch"),
    _HistoryWriter: ("rows",),
}


def _resumable_fields(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    return next(f for kind, f in _RESUMABLE_STATE.items() if isinstance(callback, kind))


# ----------------------------------------------------------------------------- outputs


def _finish(
    run: _Run,
    phases: dict[str, dict[str, Any]],
    precision: str,
    xla: bool,
    seconds: float,
    resumed: bool,
) -> TrainResult:
    cfg, model = run.cfg, run.classifier
    if getattr(model, "optimizer", None) is None:  # only the feature head was compiled
        lr = cfg.train.fine_tune_lr if phases.get("2", {}).get("epochs") else cfg.train.head_lr
        _compile(run, model, lr)
    # The model holds the last phase's best weights, so its validation metrics are that
    # epoch's (the tests check them against the saved model).
    last = [p for p in phases.values() if p.get("epochs")][-1]
    final = {"loss": last["best_val_loss"], "accuracy": last["best_val_accuracy"]}
    out = run.work_dir
    files = [out / CONFIG_FILE, out / HISTORY_FILE]
    with atomic_path(out / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
    files.append(out / MODEL_FILE)
    files.append(write_json(out / LABELS_FILE, run.classes))
    if run.chief:
        files.append(_export_serving(model, run.backbone, out / SAVED_MODEL_DIR))
        files.append(_plot_learning_curves(run.history, out / CURVES_FILE))
    files.extend(p for p in (_checkpoint_path(run, 1), _checkpoint_path(run, 2)) if p.is_file())
    if cfg.train.tensorboard:
        files.append(out / "logs")
    summary = {
        "run": cfg.train.run_name,
        "run_dir": str(out),
        "dataset": cfg.data.dataset,
        "data": _provenance(cfg, out),
        "classes": run.classes,
        "train_images": len(run.train_rows),
        "val_images": len(run.val_rows),
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": cfg.image_size,
        "device": describe_devices(run.strategy),
        "strategy": strategy_name(run.strategy),
        "replicas": run.strategy.num_replicas_in_sync,
        "workers": input_pipelines(run.strategy),
        "precision": precision,
        "xla": xla,
        "global_batch": run.global_batch,
        "class_weights": run.class_weights,
        "parameters": count_params(model.weights),
        "resumed": resumed,
        "phases": {k: {n: v for n, v in p.items() if n != "history"} for k, p in phases.items()},
        "epochs": len(run.history),
        "seconds": seconds,
        "final": {"val_loss": final["loss"], "val_accuracy": final["accuracy"]},
        "memory": _memory_figures(cfg, len(run.classes), run.rss_before),
        "files": [str(p) for p in files],
    }
    files.append(write_json(out / SUMMARY_FILE, summary))
    _remove_backups(out)
    _print_outputs(out, files, summary)
    return TrainResult(out, summary, files)


def _provenance(cfg: Config, out: Path) -> dict[str, Any]:
    """What the run was trained on: the data set's record and the split kept in the run."""
    record = read_record(out / RUN_DATA_DIR)
    return {
        "manifests_dir": str(cfg.dataset_dir()),
        "recorded_split": str(out / RUN_DATA_DIR),
        "fingerprint": record.fingerprint if record else None,
        "manifests": record.manifests if record else None,
    }


def _current_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _memory_figures(cfg: Config, num_classes: int, rss_before: int | None) -> dict[str, Any]:
    """The estimate for this run (pipeline.memory) next to what the run really used."""
    import resource

    from pipeline.memory import estimate_for_run

    try:
        estimate = estimate_for_run(cfg, num_classes)
    except Exception as exc:  # the run is done; a missing estimate must not fail it
        estimate = {"error": f"memory estimate unavailable: {exc}"}
    measured: dict[str, Any] = {
        # Linux reports KiB. The process peak includes the TensorFlow runtime, the input
        # pipeline and the feature cache, so it exceeds the estimate's model-only figure.
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if rss_before:
        measured["process_rss_before_training_bytes"] = rss_before
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        info = tf.config.experimental.get_memory_info(gpus[0].name)
        measured["gpu_peak_bytes"] = int(info["peak"])
    return {"estimate": estimate, "measured": measured}


def _remove_backups(out: Path) -> None:
    backup = out / "backup"
    if backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()


def _export_serving(model: keras.Model, backbone: Backbone, path: Path) -> Path:
    """A SavedModel whose `serve` takes RGB pixels in [0, 255] and returns probabilities.

    Preprocessing is inside the export, so a server feeds decoded, resized images.
    """
    size = model.input_shape[1]
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(pixels):
        return model(preprocess(pixels, backbone), training=False)

    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(str(tmp), verbose=False)
    replace_dir(tmp, path)
    return path


def _plot_learning_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, both phases, with the
    phase boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.plots import save_figure

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[metric] for r in history], "o-", ms=3, label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", ms=3, label=f"val {metric}")
        phase_one = [r["epoch"] for r in history if r["phase"] == 1]
        if phase_one and len(phase_one) < len(history):
            ax.axvline(max(phase_one) + 0.5, color="grey", ls="--", lw=1)
            ax.text(
                max(phase_one) + 0.6,
                0.98,
                "fine-tuning",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="grey",
            )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves (phase 1: frozen base | phase 2: fine-tuning)")
    return save_figure(fig, path)


def _print_outputs(out: Path, files: list[Path], summary: dict[str, Any]) -> None:
    final = summary["final"]
    print(
        f"Done in {summary['seconds']:.0f}s: val_accuracy {final['val_accuracy']:.4f}, "
        f"val_loss {final['val_loss']:.4f}. Wrote {out}/:"
    )
    notes = {
        MODEL_FILE: "the trained classifier (keras.models.load_model)",
        SAVED_MODEL_DIR: "SavedModel for serving: `serve`(RGB pixels 0-255) -> probabilities",
        LABELS_FILE: "class names, in output order",
        CONFIG_FILE: "the effective configuration (--config to repeat the run)",
        HISTORY_FILE: "loss, accuracy, learning rate, time per epoch, both phases",
        CURVES_FILE: "learning curves, phase boundary marked",
        SUMMARY_FILE: "time per phase, images/s, best epochs, final validation metrics, "
        "memory estimated and measured",
        "logs": "TensorBoard logs (tensorboard --logdir ...)",
    }
    for path in files:
        rel = path.relative_to(out) if path.is_relative_to(out) else path
        note = notes.get(
            str(rel), "best weights of that phase" if "checkpoints" in str(rel) else ""
        )
        print(f"  {str(rel) + ('/' if path.is_dir() else ''):<32} {note}")
    from pipeline.memory import phases_run

    memory = summary.get("memory", {})
    training = memory.get("estimate", {}).get("training", {})
    phases = phases_run(training, summary.get("phases", {}))  # only those that trained
    if phases:
        estimated = ", ".join(
            f"{name} {figures['realistic_bytes'] / 2**20:,.0f} MiB"
            for name, figures in phases.items()
        )
        measured = memory["measured"]
        peak = measured["process_peak_rss_bytes"] / 2**20
        before = measured.get("process_rss_before_training_bytes")
        already = (
            f", {before / 2**20:,.0f} MiB of it in use before training started" if before else ""
        )
        print(
            f"Memory: estimated training ({estimated}); measured process peak {peak:,.0f} MiB"
            f"{already}. The estimate counts the model's tensors for one batch; the process "
            "peak adds TensorFlow's runtime, the input pipeline and Python."
        )
