"""How a phase trains: compile, the training step (forward, loss, gradients, update), the
validation pass, and ``fit``, the loop that drives them and Keras's callbacks epoch by epoch.

One training path for every set-up, from one CPU to several machines. ``model.fit`` fails
under ``MultiWorkerMirroredStrategy`` with Keras 3 ("Attempt to convert a value
(PerReplica...) with an unsupported type", keras-team/keras#20585), so every run goes
through ``fit`` below: a ``tf.function`` that ``strategy.run``s a ``GradientTape`` step over
the Keras model's variables, the loss averaged over the global batch with
``tf.nn.compute_average_loss``, and Keras's own callbacks (early stopping, learning-rate
reduction, BackupAndRestore, TensorBoard) driven epoch by epoch exactly as ``model.fit``
drives them. Under the default strategy ``strategy.run`` is a plain call, so the single-
device run is the same code, not a second path.

Metrics are sums reduced across replicas and accumulated on the host in float64 (Keras's
metric variables can overflow under MirroredStrategy, keras-team/keras#21467), and every
step's loss is checked: a non-finite loss stops training with a message that says where,
what is left on disk, and what to try (keras-team/keras#21172 reports NaN losses with
MirroredStrategy on several GPUs since Keras 3.7).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.compat import ema_pairs, initial_epoch, reset_initial_epoch
from pipeline.config import TrainConfig
from pipeline.training.feeds import Feed
from pipeline.training.runtime import strategy_name

NAN_ISSUE = "keras-team/keras#21172"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message says where and what to try."""


# ----------------------------------------------------------------------------- compile


def compile_for_training(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    lr: float | keras.optimizers.schedules.LearningRateSchedule,
    t: TrainConfig,
) -> None:
    """Adam at lr (a rate or a schedule of the step), its state built now (saved state =
    loaded state). With train.ema > 0 it also keeps a moving average of the weights (Polyak
    averaging), which ``fit`` validates and checkpoints instead of the last step's weights."""
    ema = {"use_ema": True, "ema_momentum": t.ema} if t.ema > 0 else {}
    with strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(lr, **ema),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
            metrics=["accuracy"],
        )
        model.optimizer.build(model.trainable_variables)


# ----------------------------------------------------------------------------- steps


def _crossentropy(labels: tf.Tensor, probs: tf.Tensor, label_smoothing: float) -> tf.Tensor:
    return keras.losses.categorical_crossentropy(labels, probs, label_smoothing=label_smoothing)


def _correct(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    hits = tf.equal(tf.argmax(probs, axis=-1), tf.argmax(labels, axis=-1))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def build_train_step(
    model: keras.Model,
    forward: Callable,
    strategy: tf.distribute.Strategy,
    global_batch: int,
    class_weights: Sequence[float] | None,
    label_smoothing: float,
    jit_compile: bool,
) -> Callable:
    """One training step of ``fit`` on a distributed batch: (summed loss, correct, images).
    Public so that benchmarks time the very step the train stage runs."""
    optimizer = model.optimizer
    variables = model.trainable_variables
    weights = tf.constant(class_weights, tf.float32) if class_weights is not None else None

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            probs = forward(images)
            per_example = _crossentropy(labels, probs, label_smoothing)
            if weights is not None:  # as Keras's class_weight: a weight per example
                per_example = per_example * tf.reduce_sum(labels * weights, axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)  # identity unless loss scaling (float16)
        grads = tape.gradient(scaled, variables)
        return grads, tf.reduce_sum(per_example), _correct(labels, probs)

    if jit_compile:  # XLA compiles the forward and backward pass; the update stays outside
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(images, labels):
        grads, loss_sum, correct = gradients(images, labels)
        optimizer.apply(grads, variables)  # all-reduces (sums) the gradients across replicas
        return loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    return _summed_over_replicas(strategy, replica_step)


def _summed_over_replicas(strategy: tf.distribute.Strategy, replica_step: Callable) -> Callable:
    """A tf.function running replica_step on every replica and summing each output."""

    @tf.function
    def step(batch):
        sums = strategy.run(replica_step, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

    return step


def _build_eval_step(
    model: keras.Model, strategy: tf.distribute.Strategy, label_smoothing: float
) -> Callable:
    def replica_step(images, labels, mask):
        probs = model(images, training=False)
        per_example = _crossentropy(labels, probs, label_smoothing) * mask
        hits = tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(hits * mask), tf.reduce_sum(mask)

    return _summed_over_replicas(strategy, replica_step)


def validate(
    model: keras.Model,
    feed: Feed,
    strategy: tf.distribute.Strategy,
    label_smoothing: float = 0.0,
    step: Callable | None = None,
    dataset: Any = None,
) -> dict[str, float]:
    """Loss and accuracy over one padded pass of an evaluation feed, on every replica.

    ``dataset``: the feed's distributed dataset, built once and passed again each epoch
    (building a decoding pipeline costs about half a second).
    """
    step = step or _build_eval_step(model, strategy, label_smoothing)
    dataset = dataset or strategy.distribute_datasets_from_function(feed.make)
    iterator = iter(dataset)
    totals = np.zeros(3)
    for _ in range(feed.steps):
        totals += [float(v) for v in step(next(iterator))]
    count = max(totals[2], 1.0)
    return {"loss": totals[0] / count, "accuracy": totals[1] / count}


def per_example_losses(
    model: keras.Model,
    feed: Feed,
    strategy: tf.distribute.Strategy,
    label_smoothing: float = 0.0,
) -> np.ndarray:
    """Each real (unpadded) example's loss over one pass of an evaluation feed, in the
    feed's order: comparing two models on the same images, paired, needs more than means."""

    def replica_step(images, labels, mask):
        probs = model(images, training=False)
        return _crossentropy(labels, probs, label_smoothing), mask

    @tf.function
    def step(batch):
        return strategy.run(replica_step, args=batch)

    iterator = iter(strategy.distribute_datasets_from_function(feed.make))
    losses = []
    for _ in range(feed.steps):
        per_replica, masks = step(next(iterator))
        for loss, mask in zip(
            strategy.experimental_local_results(per_replica),
            strategy.experimental_local_results(masks),
        ):
            losses.append(loss.numpy().astype(np.float64)[mask.numpy() > 0])
    return np.concatenate(losses)


# ----------------------------------------------------------------------------- the loop


def _learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def fit(
    model: keras.Model,
    train: Feed,
    val: Feed,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback],
    strategy: tf.distribute.Strategy,
    *,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    jit_compile: bool = False,
    verbose: int | None = None,
    label: str = "training",
    forward: Callable | None = None,
) -> keras.callbacks.History:
    """``model.fit`` for every strategy: compiled model in, callbacks driven per epoch.

    The model must have been built and compiled (its optimizer) in ``strategy.scope()``.
    ``forward(images)`` is the training-time call (default ``model(images, training=True)``;
    see ``pipeline.model.training_forward``); its trainable variables are the model's.
    Logs per epoch: loss, accuracy, val_loss, val_accuracy, learning_rate. A
    BackupAndRestore callback may restore an epoch in ``on_train_begin``, as it does for
    ``model.fit`` (``pipeline.compat.initial_epoch``); training then starts from there.
    """
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=train.steps,
        model=model,
    )
    forward = forward or (lambda images: model(images, training=True))
    train_step = build_train_step(
        model,
        forward,
        strategy,
        train.global_batch,
        class_weights,
        label_smoothing,
        jit_compile,
    )
    eval_step = _build_eval_step(model, strategy, label_smoothing)
    model.stop_training = False
    reset_initial_epoch(model)  # Keras's own resume hand-off, as in Model.fit
    callback_list.on_train_begin()
    first_epoch = initial_epoch(model)
    ema = _ema_optimizer(model)
    # Backups are taken at epoch end, with the averaged weights in the model: a resumed
    # run starts in that state.
    ema_in_model = ema is not None and first_epoch > 0
    iterator = iter(strategy.distribute_datasets_from_function(train.make))
    val_dataset = strategy.distribute_datasets_from_function(val.make)
    epoch_logs: dict[str, float] = {}
    for epoch in range(first_epoch, epochs):
        if ema_in_model:  # train the raw weights; the average goes back to its slots
            _swap_ema(ema, strategy)
            ema_in_model = False
        callback_list.on_epoch_begin(epoch)
        totals = np.zeros(3)
        for batch in range(train.steps):
            callback_list.on_train_batch_begin(batch)
            values = [float(v) for v in train_step(next(iterator))]
            if not math.isfinite(values[0]):
                raise NonFiniteLossError(_non_finite_message(label, epoch, batch, strategy))
            totals += values
            logs = {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
            callback_list.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        epoch_logs = {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
        if ema is not None:  # validate, checkpoint and back up the averaged weights
            _swap_ema(ema, strategy)
            ema_in_model = True
        val_logs = validate(model, val, strategy, label_smoothing, eval_step, val_dataset)
        epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        epoch_logs["learning_rate"] = _learning_rate(model)
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    if not ema_in_model:  # (with the average in the model, the run already ends on it)
        model.optimizer.finalize_variable_values(model.trainable_variables)
    callback_list.on_train_end(epoch_logs)
    return model.history


def _ema_optimizer(model: keras.Model) -> keras.optimizers.Optimizer | None:
    """The optimizer keeping a moving average of the weights (``use_ema``), or None."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
    return optimizer if getattr(optimizer, "use_ema", False) else None


def _swap_ema(optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy) -> None:
    """Exchange the trained weights with their moving average, on every replica.

    As keras.callbacks.SwapEMAWeights does, which cannot be used here: it swaps on
    ``on_test_begin``, and this loop has its own evaluation. a, b -> a + b, a, b.
    """
    for var, average in ema_pairs(optimizer):
        var, average = getattr(var, "value", var), getattr(average, "value", average)
        strategy.extended.update(var, lambda a, b: a.assign_add(b), args=(average,))
        strategy.extended.update(average, lambda a, b: a.assign(b - a), args=(var,))
        strategy.extended.update(var, lambda a, b: a.assign_sub(b), args=(average,))


def _non_finite_message(label: str, epoch: int, batch: int, strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    policy = keras.mixed_precision.global_policy().name
    hint = (
        f"; with several GPUs this matches {NAN_ISSUE} (NaN losses under MirroredStrategy "
        "since Keras 3.7): retry with STRATEGY=default to confirm"
        if replicas > 1
        else ""
    )
    return (
        f"The training loss became NaN or infinite in {label}, epoch {epoch + 1}, step "
        f"{batch + 1} ({strategy_name(strategy)} strategy, {replicas} replica(s), "
        f"{policy}). Training stopped; the last backup and best checkpoint are as they were "
        "at the end of the previous epoch, so rerunning resumes from there. Try a lower "
        "learning rate (train.head_lr / train.fine_tune_lr), PRECISION=float32 or "
        f"mixed_bfloat16{hint}"
    )


def warmup_cosine(
    peak: float, steps_per_epoch: int, epochs: int, warmup_epochs: float
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to ``peak``, then cosine decay to 0 by the last step."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=peak, warmup_steps=warmup
    )
