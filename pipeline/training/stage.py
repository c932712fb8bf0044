"""The train stage (`make train`): two-phase transfer learning that resumes where it stopped.

``train(cfg)`` sets up the run (strategy, precision, run folder, split, classifier), trains
phase 1 then phase 2, and writes the outputs (``pipeline.training.outputs``).

Phase 1 trains a new head on the frozen base, on cached pooled features when nothing is
augmented (``pipeline.training.features``). Phase 2 unfreezes the top of the base from the
backbone's cut point, BatchNorm layers still frozen, and continues from the best phase-1
weights at a low learning rate. Both phases stop early on validation loss and go back to
their best weights, lower the learning rate on plateaus, keep a best checkpoint and a CSV
history, and back their state up after every epoch (``pipeline.training.callbacks``), so a
run killed mid-epoch continues from its last finished epoch when started again. Every
strategy, one device to several machines, goes through the same loop
(``pipeline.training.loop.fit``: forward, loss, gradients, update).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from typing import Any

import keras
import tensorflow as tf

from pipeline.backbones import get_backbone
from pipeline.compat import op_determinism
from pipeline.config import (
    Config,
    ConfigError,
    save_config,
    with_overrides,
)
from pipeline.files import generated_dir, write_json
from pipeline.model import (
    build_classifier,
    count_params,
    fine_tune_cut,
    freeze_for_phase,
    get_base,
    resolve_weights,
    training_forward,
)
from pipeline.runs import CONFIG_FILE, STATE_FILE, read_state, resolve_run_dir
from pipeline.training.callbacks import phase_callbacks
from pipeline.training.context import TrainingRun
from pipeline.training.feeds import Feed, feature_feeds, image_train_feed, val_feed
from pipeline.training.loop import compile_for_training, fit
from pipeline.training.outputs import TrainResult, current_rss_bytes, finish
from pipeline.training.runtime import (
    describe_devices,
    multi_worker_requested,
    select_precision,
    select_strategy,
    worker_role,
)
from pipeline.training.trainset import class_balance, global_batch, run_split
from pipeline.validation import MULTI_WORKER_NEEDS_RUN_NAME


def train(cfg: Config) -> TrainResult:
    """Train models/<run>/ from cfg: both phases, then the model, export and reports."""
    _check_config(cfg)
    strategy = select_strategy(cfg)  # first: multi-worker set-up must precede other TF work
    policy = keras.mixed_precision.global_policy()
    determinism_enabled, disable_determinism = op_determinism()
    determinism = cfg.train.deterministic and not determinism_enabled()
    try:
        return _train(cfg, strategy, current_rss_bytes())
    finally:  # the stage leaves the process as it found it (tests run stages in-process)
        keras.mixed_precision.set_global_policy(policy)
        if determinism:
            disable_determinism()


def _check_config(cfg: Config) -> None:
    """What only this machine can answer, before anything is loaded. Every check that
    depends on the configuration alone is in ``pipeline.validation``, which every stage runs;
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
    run_dir, cfg, resumed = resolve_run_dir(cfg, "" if chief else f"workers/{role}")
    work_dir = run_dir if chief else run_dir / "workers" / role
    generated_dir(run_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_data = run_split(cfg, work_dir, resumed)
    classes, train_rows, val_rows = run_data.classes, run_data.rows("train"), run_data.rows("val")
    save_config(cfg, work_dir / CONFIG_FILE)

    replicas = strategy.num_replicas_in_sync
    batch = global_batch(cfg.input.batch_size, replicas, len(train_rows))
    labels = [r.label_index for r in train_rows]
    weights_per_class, weights_line = class_balance(labels, len(classes), cfg.train.class_weights)
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
        f"{', XLA' if xla else ''}. Global batch {batch} "
        f"({batch // replicas} per replica)."
    )
    print(weights_line)
    print(f"{'Resuming' if resumed else 'Run folder'}: {run_dir}")

    run = TrainingRun(
        cfg=cfg,
        strategy=strategy,
        backbone=backbone,
        work_dir=work_dir,
        chief=chief,
        classes=classes,
        train_rows=train_rows,
        val_rows=val_rows,
        classifier=classifier,
        global_batch=batch,
        class_weights=weights_per_class,
        verbose=(1 if sys.stdout.isatty() else 2) if chief else 0,
        state=read_state(work_dir),
        rss_before=rss_before,
    )
    phases = {"1": _phase_one(run, xla)}
    if backbone.pretrained and cfg.train.fine_tune_epochs > 0:
        phases["2"] = _phase_two(run, xla)
    return finish(run, phases, precision, xla, time.perf_counter() - started, resumed)


def _weights_text(cfg: Config, resolved: str | None) -> str:
    if not get_backbone(cfg.model.backbone).pretrained:
        return "trained from scratch"
    if resolved is None:
        return "random initialisation"
    return f"weights {resolved}"


# ----------------------------------------------------------------------------- phases


def _phase_one(run: TrainingRun, xla: bool) -> dict[str, Any]:
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
        model, train, val, extra = feature_feeds(run)
        what = "new head on cached features"
    elif run.backbone.pretrained:
        model, train, val = run.classifier, image_train_feed(run, t.head_augment), val_feed(run)
        what = "new head, " + (
            "augmented images" if t.head_augment else "the frozen base runs every epoch"
        )
    else:
        model, train, val = run.classifier, image_train_feed(run, True), val_feed(run)
        what = "the whole network from scratch, augmented images"
    trainable = count_params(run.classifier.trainable_variables)
    print(
        f"Phase 1: {what}; {trainable:,} trainable parameters, lr {t.head_lr:g}, "
        f"up to {epochs} epochs"
    )
    result = _run_phase(run, 1, model, train, val, epochs, t.head_lr, xla)
    result.update(extra, cached_features=cached)
    return _record_phase(run, 1, result)


def _phase_two(run: TrainingRun, xla: bool) -> dict[str, Any]:
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
    train, val = image_train_feed(run, True), val_feed(run)
    result = _run_phase(run, 2, run.classifier, train, val, t.fine_tune_epochs, t.fine_tune_lr, xla)
    result["first_trainable_layer"] = trainable_layers[0] if trainable_layers else None
    return _record_phase(run, 2, result)


def _run_phase(
    run: TrainingRun,
    phase: int,
    model: keras.Model,
    train: Feed,
    val: Feed,
    epochs: int,
    lr: float,
    xla: bool,
) -> dict[str, Any]:
    """Train one phase to its best epoch (resuming from its backup), then load that
    epoch's weights; the phase's figures for state.json and summary.json."""
    cfg = run.cfg
    compile_for_training(model, run.strategy, lr, cfg.train)
    images_per_epoch = train.steps * train.global_batch
    callbacks = phase_callbacks(run, phase, lr, images_per_epoch)
    history, best, stop = callbacks.history, callbacks.best, callbacks.stop
    backup_dir = run.backup_dir(phase)
    resuming = (backup_dir / "training_metadata.json").is_file()
    if resuming:
        print(f"Phase {phase}: resuming from its backup in {backup_dir}")
    with run.strategy.scope():
        forward = training_forward(model, cfg) if model is run.classifier else None
    fit(
        model,
        train,
        val,
        epochs,
        callbacks.all,
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


# ----------------------------------------------------------------------------- resuming


def _record_phase(run: TrainingRun, phase: int, result: dict[str, Any]) -> dict[str, Any]:
    """Mark the phase finished, then drop its backup (in this order: a kill in between
    leaves a finished phase, never a phase to redo from scratch)."""
    run.state["phases"][str(phase)] = result
    write_json(run.work_dir / STATE_FILE, run.state)
    shutil.rmtree(run.backup_dir(phase), ignore_errors=True)
    return result


def _restore_finished_phase(run: TrainingRun, phase: int, done: dict[str, Any]) -> None:
    """A resumed run skips a finished phase: its best weights and history come back."""
    path = run.checkpoint_path(phase)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing but {run.work_dir / STATE_FILE} says phase {phase} finished; "
            "delete the run folder to start it again"
        )
    run.classifier.load_weights(path)
    run.history.extend(done["history"])
    print(
        f"Phase {phase} finished earlier (best epoch {done['best_epoch']}); its best weights "
        "are loaded"
    )
