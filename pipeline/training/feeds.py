"""What the training loop reads: a ``Feed`` (per-replica batches and the steps of one pass)
for training and for validation, from images or from the cached features.

``train_feed`` and ``eval_feed`` split items between input pipelines (one per worker) and
batch them so that every replica takes the same number of steps; the builders below fill
them with this run's images (``pipeline.inputs``) or cached features
(``pipeline.training.features``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.inputs import build_eval_dataset, build_train_dataset
from pipeline.model import build_feature_head
from pipeline.training.context import TrainingRun
from pipeline.training.features import (
    CachedFeatures,
    feature_loader,
    frozen_train_dataset,
    image_loader,
    load_or_extract,
    ordered_dataset,
    weights_fingerprint,
)
from pipeline.training.runtime import input_pipelines


@dataclass
class Feed:
    """Per-replica batches for one phase: a dataset factory and the steps of one pass.

    ``make(ctx)`` builds the dataset of one input pipeline (one per worker) for
    ``strategy.distribute_datasets_from_function``: training feeds repeat forever and
    ``fit`` takes ``steps`` batches per epoch, so every worker runs the same number of steps;
    evaluation feeds are padded with masked rows for the same reason.
    """

    make: Callable[[tf.distribute.InputContext], tf.data.Dataset]
    steps: int
    global_batch: int


def shard(count: int, ctx: tf.distribute.InputContext) -> np.ndarray:
    """This input pipeline's share of items 0..count-1 (every worker decodes only its own)."""
    return np.arange(count)[ctx.input_pipeline_id :: ctx.num_input_pipelines]


def train_feed(
    count: int,
    global_batch: int,
    build: Callable[[np.ndarray, int, tf.distribute.InputContext], tf.data.Dataset],
) -> Feed:
    """build(indices, per_replica_batch, ctx) -> full batches; repeated here."""

    def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        return build(shard(count, ctx), per_replica, ctx).repeat()

    return Feed(make, max(1, count // global_batch), global_batch)


def eval_feed(
    count: int,
    global_batch: int,
    strategy: tf.distribute.Strategy,
    build: Callable[[np.ndarray, int], tf.data.Dataset],
) -> Feed:
    """build(indices, per_replica_batch) -> (x, y) batches in order; a 0/1 mask is zipped on.

    Each pipeline's share is padded (repeating its first item, masked out) to the same
    whole number of global batches, so no replica waits for another at the end of a pass.
    """
    pipelines = input_pipelines(strategy)
    per_pipeline_batch = global_batch // pipelines
    rows_per_pipeline = math.ceil(count / pipelines)
    steps = max(1, math.ceil(rows_per_pipeline / per_pipeline_batch))

    def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        indices = shard(count, ctx)
        padded = steps * per_pipeline_batch
        mask = np.zeros(padded, np.float32)
        mask[: len(indices)] = 1.0
        first = indices[:1] if len(indices) else np.zeros(1, np.int64)
        indices = np.concatenate([indices, np.repeat(first, padded - len(indices))])
        masks = tf.data.Dataset.from_tensor_slices(mask).batch(per_replica)
        return tf.data.Dataset.zip(build(indices, per_replica), masks).map(
            lambda batch, m: (*batch, m)
        )

    return Feed(make, steps, global_batch)


# ----------------------------------------------------------------------------- this run's feeds


def image_train_feed(run: TrainingRun, augment: bool) -> Feed:
    """Augmented images (build_train_dataset), or the fixed evaluation view shuffled."""
    rows, cfg, spec, k = run.train_rows, run.cfg, run.spec, run.num_classes

    def build(indices: np.ndarray, batch: int, ctx) -> tf.data.Dataset:
        seed = cfg.train.seed + ctx.input_pipeline_id
        if augment:
            return build_train_dataset(
                [rows[i] for i in indices],
                cfg.input,
                spec.size,
                k,
                seed,
                backbone=spec.backbone,
                batch_size=batch,
            )
        load = image_loader(rows, spec.backbone, spec.size, cfg.input.eval_crop_fraction, k)
        return frozen_train_dataset(indices, batch, seed, load)

    return train_feed(len(rows), run.global_batch, build)


def val_feed(run: TrainingRun) -> Feed:
    """The validation images' evaluation view, in order."""
    return eval_rows_feed(run, run.val_rows)


def eval_rows_feed(run: TrainingRun, rows: list) -> Feed:
    """These images' evaluation view, in order."""
    options, spec, k = run.cfg.input, run.spec, run.num_classes

    def build(indices: np.ndarray, batch: int) -> tf.data.Dataset:
        return build_eval_dataset(
            [rows[i] for i in indices],
            options,
            spec.size,
            backbone=spec.backbone,
            num_classes=k,
            batch_size=batch,
        )

    return eval_feed(len(rows), run.global_batch, run.strategy, build)


def cached_features(run: TrainingRun) -> dict[str, CachedFeatures]:
    """The frozen base's pooled features of every train, val and test image (extracted
    once, then reused from data/<dataset>/features/)."""
    fingerprint = weights_fingerprint(run.classifier)
    cached = {
        split: load_or_extract(
            run.classifier, rows, run.cfg, run.backbone, run.global_batch, fingerprint, split
        )
        for split, rows in (
            ("train", run.train_rows),
            ("val", run.val_rows),
            ("test", run.test_rows),
        )
    }
    for split, c in cached.items():
        how = "reused" if c.reused else f"extracted in {c.seconds:.1f}s"
        print(f"Features of {len(c.features)} {split} images {how}: {c.path}")
    return cached


def feature_feeds(
    run: TrainingRun, cached: dict[str, CachedFeatures]
) -> tuple[keras.Model, Feed, Feed]:
    """The head model, and feeds of the cached train and val features."""
    cfg, k = run.cfg, run.num_classes
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
    return head, train, val
