"""The two phases of a run, and which one's model is kept.

Phase 1 gives the pretrained base a head. By default (``train.head_fit=exact``) the head is
the multinomial logistic regression on the frozen base's cached pooled features, fitted to
its optimum with C chosen on validation (``pipeline.training.head``); ``gradient`` trains it
with Adam for ``head_epochs`` (on cached features, or on augmented images with
``head_augment``). A from-scratch network trains whole here. Phase 2 unfreezes the base
after its cut point, BatchNorm still frozen, and trains on augmented images from the
phase-1 weights: Adam's rate warms up linearly from 0 to ``fine_tune_lr`` over
``warmup_epochs`` (so its first steps, with empty moment estimates, cannot undo phase 1),
then decays along a cosine. Phase 2 is kept only if its best validation loss beats phase
1's; otherwise the run keeps the phase-1 model and says so.

Every run of a pretrained base also scores the frozen-feature logistic regression (the
baseline: what the photos give without fine-tuning) on validation and test, so that the
summary can say what fine-tuning added. Each phase is recorded in state.json when it ends,
so a resumed run skips it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from pipeline.compat import backup_saved
from pipeline.files import atomic_path
from pipeline.model import (
    HEAD_NAME,
    count_params,
    freeze_for_phase,
    get_base,
    training_forward,
)
from pipeline.runs import HISTORY_FILE, STATE_FILE
from pipeline.summary import (
    Baseline,
    PhaseResult,
    SplitScores,
    ValGain,
    trained_phases,
    write_state,
)
from pipeline.training.callbacks import phase_callbacks, write_history
from pipeline.training.context import TrainingRun
from pipeline.training.features import CachedFeatures
from pipeline.training.feeds import (
    Feed,
    cached_features,
    feature_feeds,
    image_train_feed,
    val_feed,
)
from pipeline.training.head import LogisticHead, fit_logistic_head
from pipeline.training.loop import (
    compile_for_training,
    fit,
    per_example_losses,
    validate,
    warmup_cosine,
)


def phase_one(run: TrainingRun, xla: bool) -> PhaseResult:
    """Frozen base, new head; a from-scratch network trains whole here."""
    t = run.cfg.train
    done = run.state.phases.get(1)
    freeze_for_phase(run.classifier, run.spec, 1)
    if done is not None:
        restore_finished_phase(run, 1, done)
        return done
    if run.backbone.pretrained and t.head_fit == "exact":
        return record_phase(run, 1, _exact_head(run))
    epochs = t.head_epochs
    if not run.backbone.pretrained:
        epochs = t.head_epochs + run.cfg.fine_tune_epochs
    if epochs == 0:
        return PhaseResult(epochs=0, skipped=True)
    cached = run.backbone.pretrained and t.cache_features and not t.head_augment
    extra: dict[str, Any] = {}
    if run.backbone.pretrained:  # the baseline needs the frozen features whatever phase 1 does
        features = cached_features(run)
        extra = {"baseline": _baseline(run, features), **_cache_figures(features)}
    if cached:
        model, train, val = feature_feeds(run, features)
        what = "new head (Adam) on cached features"
    elif run.backbone.pretrained:
        model, train, val = run.classifier, image_train_feed(run, t.head_augment), val_feed(run)
        what = "new head (Adam), " + (
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
    result = run_phase(run, 1, model, train, val, epochs, t.head_lr, xla)
    return record_phase(run, 1, replace(result, **extra, cached_features=cached))


def _labels(rows) -> np.ndarray:
    return np.array([r.label_index for r in rows], np.int64)


def _exact_head(run: TrainingRun) -> PhaseResult:
    """The logistic regression on the cached features, loaded into the classifier's head."""
    features = cached_features(run)
    print(
        f"Phase 1: new head fitted exactly (multinomial logistic regression, L-BFGS) on "
        f"{len(run.train_rows)} cached feature vectors; C chosen on validation"
    )
    start = time.perf_counter()
    head = _fit(run, features)
    run.classifier.get_layer(HEAD_NAME).set_weights(
        [head.kernel.astype(np.float32), head.bias.astype(np.float32)]
    )
    path = run.checkpoint_path(1)
    with atomic_path(path, suffix=".weights.h5") as tmp:
        run.classifier.save_weights(tmp)
    # Validation scored by the training loop's own pass (its loss, label smoothing
    # included), so phase 2's figures compare with these like for like.
    model, _, val = feature_feeds(run, features)
    scores = validate(model, val, run.strategy, run.cfg.train.label_smoothing)
    train_scores = head.scores(features["train"].features, _labels(run.train_rows))
    seconds = time.perf_counter() - start
    row = {
        "epoch": len(run.history) + 1,
        "phase": 1,
        "phase_epoch": 1,
        "loss": train_scores["loss"],
        "accuracy": train_scores["accuracy"],
        "val_loss": scores["loss"],
        "val_accuracy": scores["accuracy"],
        "learning_rate": 0.0,  # a solver, not a learning rate
        "seconds": seconds,
        "images_per_s": len(run.train_rows) / max(seconds, 1e-9),
    }
    run.history.append(row)
    write_history(run.work_dir / HISTORY_FILE, run.history)
    print(
        f"Phase 1: C = {head.C:g}, val_loss {scores['loss']:.4f}, val_accuracy "
        f"{scores['accuracy']:.4f} ({seconds:.1f}s)"
    )
    return PhaseResult(
        method="exact",
        epochs=1,
        best_epoch=1,
        best_val_loss=scores["loss"],
        best_val_accuracy=scores["accuracy"],
        stopped_early=False,
        resumed=False,
        optimizer="LogisticRegression(lbfgs)",
        learning_rate=0.0,
        final_learning_rate=0.0,
        seconds=seconds,
        train_images_per_s=row["images_per_s"],
        checkpoint=str(path),
        history=[row],
        cached_features=True,
        C=head.C,
        C_grid=head.grid,
        baseline=_baseline(run, features, head),
        **_cache_figures(features),
    )


def _fit(run: TrainingRun, features: dict[str, CachedFeatures]) -> LogisticHead:
    return fit_logistic_head(
        features["train"].features,
        _labels(run.train_rows),
        features["val"].features,
        _labels(run.val_rows),
        run.num_classes,
        run.class_weights,
    )


def _baseline(
    run: TrainingRun, features: dict[str, CachedFeatures], head: LogisticHead | None = None
) -> Baseline:
    """The frozen-feature logistic regression's figures on validation and test."""
    head = head or _fit(run, features)
    return Baseline(
        method="logistic regression on frozen pooled features, C chosen on validation",
        C=head.C,
        seconds=head.seconds,
        val=SplitScores.from_json(head.scores(features["val"].features, _labels(run.val_rows))),
        test=SplitScores.from_json(head.scores(features["test"].features, _labels(run.test_rows))),
    )


def _cache_figures(features: dict[str, CachedFeatures]) -> dict[str, Any]:
    return {
        "feature_cache": {s: str(c.path) for s, c in features.items()},
        "feature_cache_reused": all(c.reused for c in features.values()),
        "feature_seconds": sum(c.seconds for c in features.values()),
    }


def phase_two(run: TrainingRun, xla: bool) -> PhaseResult:
    """Top of the base unfrozen from the cut, BatchNorm frozen, augmented images."""
    t = run.cfg.train
    epochs = run.cfg.fine_tune_epochs
    freeze_for_phase(run.classifier, run.spec, 2)
    done = run.state.phases.get(2)
    if done is not None:
        restore_finished_phase(run, 2, done)
        return done
    base = get_base(run.classifier)
    trainable_layers = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    train, val = image_train_feed(run, True), val_feed(run)
    schedule = (
        f"warm-up over {t.warmup_epochs:g} epoch(s) to {t.fine_tune_lr:g}, cosine decay"
        if t.fine_tune_schedule == "cosine"
        else f"lr {t.fine_tune_lr:g}, reduced on plateaus"
    )
    print(
        f"Phase 2: fine-tuning the base after {run.spec.fine_tune_after} ({len(trainable_layers)} "
        f"layers with weights, BatchNorm frozen): "
        f"{count_params(base.trainable_variables):,} of {count_params(base.weights):,} base "
        f"parameters train; {schedule}, up to {epochs} epochs"
    )
    result = run_phase(run, 2, run.classifier, train, val, epochs, t.fine_tune_lr, xla)
    result = replace(
        result,
        val_gain=val_gain(run, val),
        first_trainable_layer=trainable_layers[0] if trainable_layers else None,
        schedule=t.fine_tune_schedule,
    )
    return record_phase(run, 2, result)


def val_gain(run: TrainingRun, val: Feed) -> ValGain:
    """Phase 2's validation-loss gain over phase 1, image by image on the same photos: the
    evidence the keep rule weighs. Leaves phase 2's best weights loaded."""
    smoothing = run.cfg.train.label_smoothing
    two = per_example_losses(run.classifier, val, run.strategy, smoothing)
    run.classifier.load_weights(run.checkpoint_path(1))
    one = per_example_losses(run.classifier, val, run.strategy, smoothing)
    run.classifier.load_weights(run.checkpoint_path(2))
    return paired_gain(one, two)


def paired_gain(one: np.ndarray, two: np.ndarray) -> ValGain:
    """Mean of ``one - two`` (per-image losses: positive means two is better), its
    standard error, their ratio z, and each side's mean loss."""
    one, two = np.asarray(one, np.float64), np.asarray(two, np.float64)
    d = one - two
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    z = mean / se if se > 0 else 0.0
    return ValGain(
        mean=mean,
        se=se,
        z=z,
        images=len(d),
        phase1_loss=float(one.mean()),
        phase2_loss=float(two.mean()),
    )


def kept_phase(phases: Mapping[int, PhaseResult], min_z: float = 0.0) -> int:
    """The phase whose model the run keeps: phase 2 only if it lowered the validation loss
    by more than ``min_z`` standard errors of its paired per-image gain. A small validation
    split cannot tell a real gain from luck; then the convex phase-1 optimum is the safer
    model. A run recorded before the paired gain compares the mean losses."""
    trained = trained_phases(phases)
    if 2 in trained and 1 in trained:
        gain = phases[2].val_gain
        if gain is None:
            return 2 if phases[2].best_val_loss < phases[1].best_val_loss else 1
        return 2 if gain.mean > 0 and gain.z > min_z else 1
    return trained[-1]


def keep_better_phase(run: TrainingRun, phases: Mapping[int, PhaseResult]) -> int:
    """Load the kept phase's weights (phase 1's when phase 2 did not beat it) and say so."""
    min_z = run.cfg.train.keep_min_z
    kept = kept_phase(phases, min_z)
    if kept == 1 and 2 in phases and phases[2].trained:
        one, two = phases[1].best_val_loss, phases[2].best_val_loss
        gain = phases[2].val_gain
        evidence = (
            f"; per-image gain {gain.mean:+.4f} ± {gain.se:.4f}, z = {gain.z:.2f}, "
            f"needs > {min_z:g} (train.keep_min_z)"
            if gain
            else ""
        )
        print(
            f"Phase 2 did not beat phase 1 on validation beyond noise (val_loss {two:.4f} "
            f"against {one:.4f}{evidence}): the phase-1 model is kept"
        )
        run.classifier.load_weights(run.checkpoint_path(1))
    return kept


def run_phase(
    run: TrainingRun,
    phase: int,
    model: keras.Model,
    train: Feed,
    val: Feed,
    epochs: int,
    lr: float,
    xla: bool,
) -> PhaseResult:
    """Train one phase to its best epoch (resuming from its backup), then load that
    epoch's weights; the phase's figures for state.json and summary.json."""
    cfg = run.cfg
    cosine = phase == 2 and cfg.train.fine_tune_schedule == "cosine"
    rate = warmup_cosine(lr, train.steps, epochs, cfg.train.warmup_epochs) if cosine else lr
    compile_for_training(model, run.strategy, rate, cfg.train)
    images_per_epoch = train.steps * train.global_batch
    callbacks = phase_callbacks(run, phase, lr, images_per_epoch, plateau=not cosine)
    history, best, stop = callbacks.history, callbacks.best, callbacks.stop
    backup_dir = run.backup_dir(phase)
    resuming = backup_saved(backup_dir)
    if resuming:
        print(f"Phase {phase}: resuming from its backup in {backup_dir}")
    with run.strategy.scope():
        forward = training_forward(model, run.backbone) if model is run.classifier else None
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
    return PhaseResult(
        method="gradient",
        epochs=len(rows),
        best_epoch=best.best_epoch + 1,
        best_val_loss=best_row["val_loss"],
        best_val_accuracy=best_row["val_accuracy"],
        stopped_early=stop.stopped_epoch > 0,
        resumed=resuming,
        optimizer=type(model.optimizer).__name__,  # LossScaleOptimizer under float16
        learning_rate=lr,
        final_learning_rate=rows[-1]["learning_rate"],
        seconds=sum(r["seconds"] for r in rows),
        train_images_per_s=len(rows) * images_per_epoch / max(train_seconds, 1e-9),
        checkpoint=str(best.path),
        history=rows,
    )


# ----------------------------------------------------------------------------- resuming


def record_phase(run: TrainingRun, phase: int, result: PhaseResult) -> PhaseResult:
    """Mark the phase finished, then drop its backup (in this order: a kill in between
    leaves a finished phase, never a phase to redo from scratch)."""
    run.state.phases[phase] = result
    write_state(run.work_dir, run.state)
    shutil.rmtree(run.backup_dir(phase), ignore_errors=True)
    return result


def restore_finished_phase(run: TrainingRun, phase: int, done: PhaseResult) -> None:
    """A resumed run skips a finished phase: its best weights and history come back."""
    path = run.checkpoint_path(phase)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing but {run.work_dir / STATE_FILE} says phase {phase} finished; "
            "delete the run folder to start it again"
        )
    run.classifier.load_weights(path)
    run.history.extend(done.history or [])
    print(
        f"Phase {phase} finished earlier (best epoch {done.best_epoch}); its best weights "
        "are loaded"
    )
