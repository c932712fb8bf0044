"""The train stage (`make train`): two-phase transfer learning that resumes where it stopped.

``train(cfg)`` sets up the run (strategy, precision, run folder, split, classifier), trains
phase 1 then phase 2, and writes the outputs (``pipeline.training.outputs``).

The phases and which one's model is kept are in ``pipeline.training.phases``: phase 1 fits a
head on the frozen base (exactly, on cached features, by default), phase 2 fine-tunes the
top of the base on augmented images under a warm-up and cosine schedule, and the run keeps
phase 2 only if it beat phase 1 on validation. Each gradient phase stops early on
validation loss, goes back to its best epoch, keeps a best checkpoint and a CSV history,
and backs its state up after every epoch (``pipeline.training.callbacks``), so a run killed
mid-epoch continues from its last finished epoch when started again. Every strategy, one
device to several machines, goes through the same loop (``pipeline.training.loop.fit``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time

import keras
import tensorflow as tf

from pipeline.backbones import Backbone
from pipeline.compat import op_determinism
from pipeline.config import (
    Config,
    ConfigError,
    save_config,
    with_overrides,
)
from pipeline.files import exclusive, generated_dir
from pipeline.model import build_classifier, classifier_spec, resolve_weights
from pipeline.runs import CONFIG_FILE, resolve_run_dir
from pipeline.summary import read_state
from pipeline.training.context import TrainingRun
from pipeline.training.forecast import forecast_lines
from pipeline.training.outputs import TrainResult, current_rss_bytes, finish
from pipeline.training.phases import keep_better_phase, phase_one, phase_two
from pipeline.training.runtime import (
    check_xla_replicas,
    describe_devices,
    local_gpus,
    multi_worker_requested,
    select_precision,
    select_strategy,
    worker_role,
)
from pipeline.training.trainset import class_balance, global_batch, run_split
from pipeline.validation import MULTI_WORKER_NEEDS_RUN_NAME

# Two processes never train one folder: the second is refused (waiting would let it resume
# a run that the first then finishes or leaves in another state).
TRAINING_ELSEWHERE = (
    "wait for it to finish (it resumes where that one stops), or give RUN_NAME=<new name> "
    "to train another run beside it"
)


def train(cfg: Config) -> TrainResult:
    """Train models/<run>/ from cfg: both phases, then the model, export and reports."""
    _check_config(cfg)
    strategy = select_strategy(cfg)  # first: multi-worker set-up must precede other TF work
    policy = keras.mixed_precision.global_policy()
    determinism_enabled, disable_determinism = op_determinism()
    determinism = cfg.train.deterministic and not determinism_enabled()
    try:
        with contextlib.ExitStack() as locks:
            return _train(cfg, strategy, current_rss_bytes(), locks)
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


def _train(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    rss_before: int | None,
    locks: contextlib.ExitStack,
) -> TrainResult:
    """``rss_before``: the process's resident memory before anything was built, reported
    beside the peak so that the difference between estimate and peak has a figure.
    ``locks``: holds the run folder's lock until the caller is done."""
    started = time.perf_counter()
    precision = select_precision(cfg)
    xla = cfg.train.xla
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
        cfg = with_overrides(cfg, {"input.deterministic": True})
        if xla:
            print("train.deterministic: XLA turned off (not every XLA kernel is deterministic)")
            xla = False
    spec = classifier_spec(cfg)
    backbone = spec.backbone
    check_xla_replicas(xla, strategy.num_replicas_in_sync, backbone.pretrained)
    weights = resolve_weights(backbone, spec.weights, spec.alpha, spec.size)
    chief, role = worker_role(strategy)
    # Each worker writes its own folder; the chief's is the run folder itself.
    run_dir, cfg, resumed = resolve_run_dir(cfg, "" if chief else f"workers/{role}")
    work_dir = run_dir if chief else run_dir / "workers" / role
    generated_dir(run_dir)
    locks.enter_context(exclusive(work_dir, "make train", wait=False, fix=TRAINING_ELSEWHERE))
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
        classifier = build_classifier(spec, len(classes), weights)

    print(
        f"Training {backbone.name} ({_weights_text(backbone, weights)}) on {cfg.data.dataset}: "
        f"{len(classes)} classes, {len(train_rows)} train / {len(val_rows)} val images at "
        f"{spec.size}x{spec.size}"
    )
    print(
        f"Device: {describe_devices(strategy)}. Precision {precision}"
        f"{', XLA' if xla else ''}. Global batch {batch} "
        f"({batch // replicas} per replica)."
    )
    print(weights_line)
    if chief and not local_gpus() and backbone.pretrained:
        images = sum(len(run_data.rows(split)) for split in ("train", "val", "test"))
        epochs = cfg.train.fine_tune_epochs  # None: each backbone's own
        counts = (images, len(train_rows), len(val_rows), epochs)
        for line in forecast_lines(backbone.name, spec.size, *counts):
            print(line)
    print(f"{'Resuming' if resumed else 'Run folder'}: {run_dir}")

    run = TrainingRun(
        cfg=cfg,
        strategy=strategy,
        spec=spec,
        work_dir=work_dir,
        chief=chief,
        classes=classes,
        train_rows=train_rows,
        val_rows=val_rows,
        test_rows=[r for r in run_data.rows("test") if os.path.isfile(r.path)],
        classifier=classifier,
        global_batch=batch,
        class_weights=weights_per_class,
        verbose=(1 if sys.stdout.isatty() else 2) if chief else 0,
        state=read_state(work_dir),
        rss_before=rss_before,
    )
    phases = {1: phase_one(run, xla)}
    if backbone.pretrained and cfg.fine_tune_epochs > 0:
        phases[2] = phase_two(run, xla)
    kept = keep_better_phase(run, phases)
    return finish(run, phases, kept, precision, xla, time.perf_counter() - started, resumed)


def _weights_text(backbone: Backbone, resolved: str | None) -> str:
    if not backbone.pretrained:
        return "trained from scratch"
    if resolved is None:
        return "random initialisation"
    return f"weights {resolved}"
