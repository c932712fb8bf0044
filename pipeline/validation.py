"""Checks of option values: what would fail later, after minutes of work, is refused here
with the fix in the message. ``pipeline.config.validate`` runs them for every stage
(``make config`` included), so every stage accepts and refuses alike. No TensorFlow.

``ConfigError`` lives here (``pipeline.config`` imports it from here, and so may everyone
else), so that this module needs nothing from ``pipeline.config`` at run time.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # annotations only: config imports this module
    from pipeline.config import (
        Config,
        DataConfig,
        InputConfig,
        MemoryConfig,
        ModelConfig,
        TrainConfig,
    )


class ConfigError(ValueError):
    """A configuration value or name that cannot be used; the message says how to fix it."""


# train.run_name becomes a folder name: models/<run_name>/.
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MULTI_WORKER_NEEDS_RUN_NAME = (
    "Training on several machines needs train.run_name (RUN_NAME=...), the same on "
    "every worker, so that all of them write and resume the same run"
)


def check_config(cfg: Config) -> None:
    """Reject values that would fail later, after minutes of work, with the fix in the message."""
    d, i, t = cfg.data, cfg.input, cfg.train
    if not (d.dataset in ("flowers", "intel") or d.dataset.startswith("folder:")):
        raise ConfigError(
            f"data.dataset must be flowers, intel or folder:PATH. Received: {d.dataset!r}"
        )
    if d.dataset.startswith("folder:") and not d.dataset[len("folder:") :].strip():
        raise ConfigError(
            "data.dataset=folder: has no path (was DATASET=folder:$(VAR) given an unset "
            "variable?): name the photos folder, e.g. DATASET=folder:~/photos"
        )
    for key, value in (("val_fraction", d.val_fraction), ("test_fraction", d.test_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"data.{key} must be between 0 and 1 (exclusive). Received: {value}")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            "data.val_fraction + data.test_fraction must leave images for training. "
            f"Received: {d.val_fraction} + {d.test_fraction}"
        )
    from pipeline.backbones import BACKBONES, check_input_size  # imports no TensorFlow

    backbone = BACKBONES.get(cfg.model.backbone)
    if backbone is None:
        raise ConfigError(
            f"model.backbone must be one of {', '.join(BACKBONES)}. "
            f"Received: {cfg.model.backbone!r}"
        )
    if i.image_size != 0:  # 0: the backbone's own size
        try:
            check_input_size(backbone, i.image_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    _validate_data(d)
    _validate_input(i)
    _validate_model(cfg.model)
    _validate_train(t)
    _check_choices(cfg)
    if cfg.experiment.repeats < 1:
        raise ConfigError(
            f"experiment.repeats must be at least 1. Received: {cfg.experiment.repeats}"
        )
    for key, value, least in (
        ("eval.top_k", cfg.eval.top_k, 1),
        ("eval.gallery_size", cfg.eval.gallery_size, 0),
        ("predict.top_k", cfg.predict.top_k, 1),
        ("predict.batch_size", cfg.predict.batch_size, 0),
        ("export.calibration_images", cfg.export.calibration_images, 1),
        ("export.latency_images", cfg.export.latency_images, 1),
    ):
        _at_least(key, value, least)
    if not 0.0 <= cfg.export.max_drop <= 1.0:
        raise ConfigError(
            "export.max_drop must be in [0, 1] (0.02 = 2 points of accuracy). "
            f"Received: {cfg.export.max_drop}"
        )
    if not 0.0 <= cfg.predict.unknown_rate < 1.0:
        raise ConfigError(
            "predict.unknown_rate must be in [0, 1) (0.05: 5% of validation photos flagged "
            f"unknown by mistake). Received: {cfg.predict.unknown_rate}"
        )
    model = cfg.predict.model
    if model and not model.endswith(".tflite"):
        raise ConfigError(
            f"predict.model must be an exported .tflite file (make export). Received: {model!r}; "
            "for the run's own model give RUN=<run> instead"
        )
    _validate_memory(cfg.memory)


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The allowed values of an option declared as ``Literal[...]``; () for any other type."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _check_choices(cfg: Config) -> None:
    """Every option typed ``Literal[...]`` in pipeline.config holds one of its values."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for key, annotation in typing.get_type_hints(type(values)).items():
            allowed = literal_choices(annotation)
            value = getattr(values, key)
            if allowed and value not in allowed:
                raise ConfigError(
                    f"{section.name}.{key} must be one of {', '.join(allowed)}. Received: {value!r}"
                )


def _at_least(key: str, value: float, least: float) -> None:
    if value < least:
        raise ConfigError(f"{key} must be {least} or more. Received: {value}")


def _validate_data(d: DataConfig) -> None:
    for key, value, least in (
        ("min_side", d.min_side, 1),
        ("max_pixels", d.max_pixels, 1),
        ("small_class_warning", d.small_class_warning, 0),
        ("workers", d.workers, 0),  # 0 = one per CPU core
        ("cache_size", d.cache_size, 0),  # 0 = no cache
        ("near_duplicate_bits", d.near_duplicate_bits, -1),  # -1 = off
    ):
        _at_least(f"data.{key}", value, least)
    if d.near_duplicate_bits > 16:
        raise ConfigError(
            "data.near_duplicate_bits must be 16 or less: beyond that, unrelated photos' "
            f"64-bit hashes start to match. Received: {d.near_duplicate_bits}"
        )


def _validate_input(i: InputConfig) -> None:
    if i.batch_size < 1:
        raise ConfigError(f"input.batch_size must be at least 1. Received: {i.batch_size}")
    _at_least("input.shuffle_buffer", i.shuffle_buffer, 1)
    for key, value in (
        ("crop_area_min", i.crop_area_min),
        ("crop_aspect_min", i.crop_aspect_min),
        ("eval_crop_fraction", i.eval_crop_fraction),
    ):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"input.{key} must be in (0, 1]. Received: {value}")
    # The ranges Keras's layers accept for a single factor (keras 3: RandomRotation,
    # RandomZoom, RandomBrightness [-1, 1], RandomContrast and CutMix [0, 1]); a negative
    # factor means the same as its absolute value there, so only 0 (off) to 1 is kept.
    for key, value, layer in (
        ("rotation", i.rotation, "RandomRotation factor, a fraction of a full turn"),
        ("zoom", i.zoom, "RandomZoom factor"),
        ("contrast", i.contrast, "RandomContrast factor"),
        ("brightness", i.brightness, "RandomBrightness factor"),
        ("cutmix", i.cutmix, "CutMix factor"),
    ):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"input.{key} must be in [0, 1] (the Keras {layer}; 0 = off). Received: {value}"
            )
    # MixUp's alpha parameterises Beta(alpha, alpha): a negative one gives NaN weights.
    if not i.mixup >= 0.0:
        raise ConfigError(
            f"input.mixup must be 0 (off) or a positive MixUp alpha, e.g. 0.2. Received: {i.mixup}"
        )


def _validate_model(m: ModelConfig) -> None:
    if not m.alpha > 0.0:
        raise ConfigError(
            f"model.alpha must be a positive width multiplier (MobileNet: 0.25 to 1.0). "
            f"Received: {m.alpha}"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1). Received: {m.dropout}")
    if m.cnn_width < 1 or not 1 <= m.cnn_blocks <= 8:
        raise ConfigError(
            "model.cnn_width must be >= 1 and model.cnn_blocks between 1 and 8. Received: "
            f"{m.cnn_width}, {m.cnn_blocks}"
        )


MAX_SEED = 2**32 - 1


def _validate_train(t: TrainConfig) -> None:
    for key, value in (("head_epochs", t.head_epochs), ("fine_tune_epochs", t.fine_tune_epochs)):
        if value is not None and value < 0:
            raise ConfigError(f"train.{key} must be 0 or more. Received: {value}")
    if t.head_epochs == 0 and t.fine_tune_epochs == 0:  # unset: the backbone's own, never 0
        raise ConfigError(
            "train.head_epochs and train.fine_tune_epochs are both 0: nothing to train"
        )
    for key, value in (("head_lr", t.head_lr), ("fine_tune_lr", t.fine_tune_lr)):
        if not value > 0:
            raise ConfigError(f"train.{key} must be a positive learning rate. Received: {value}")
    for key, value in (("patience", t.patience), ("lr_patience", t.lr_patience)):
        if value < 1:
            raise ConfigError(f"train.{key} must be at least 1 epoch. Received: {value}")
    if t.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be 0 or more. Received: {t.warmup_epochs}")
    if not 0 <= t.seed <= MAX_SEED:  # NumPy's seed range: refused here, not after data loads
        raise ConfigError(f"train.seed must be between 0 and {MAX_SEED}. Received: {t.seed}")
    if not t.keep_min_z >= 0:
        raise ConfigError(f"train.keep_min_z must be 0 or more. Received: {t.keep_min_z}")
    if t.head_fit == "exact" and t.head_augment:
        raise ConfigError(
            "train.head_fit=exact fits the head on cached features, which cannot be augmented: "
            "use train.head_augment=false, or train.head_fit=gradient to augment in phase 1"
        )
    if not 0.0 <= t.ema < 1.0:
        raise ConfigError(f"train.ema must be in [0, 1) (0 = off). Received: {t.ema}")
    if not 0.0 < t.lr_factor < 1.0:
        raise ConfigError(f"train.lr_factor must be between 0 and 1. Received: {t.lr_factor}")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing must be in [0, 1). Received: {t.label_smoothing}")
    if t.run_name and not RUN_NAME.match(t.run_name):
        raise ConfigError(
            "train.run_name must be a folder name (letters, digits, '.', '_', '-'). "
            f"Received: {t.run_name!r}"
        )
    # multi_worker asked for by name; train also checks TF_CONFIG (strategy=auto) at run time.
    if t.strategy == "multi_worker" and not t.run_name:
        raise ConfigError(MULTI_WORKER_NEEDS_RUN_NAME)


def _validate_memory(m: MemoryConfig) -> None:
    from pipeline.units import parse_quantity

    try:
        if parse_quantity(m.budget) <= 0:
            raise ValueError(f"memory.budget must be positive, e.g. 16GiB. Received: {m.budget!r}")
        if m.throughput.strip().lower() not in ("", "measure"):
            parse_quantity(m.throughput, "memory.throughput")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key, value in (
        ("optimizer_slots", m.optimizer_slots),
        ("overhead", m.overhead),
        ("epoch_images", m.epoch_images),
    ):
        if value < 0:
            raise ConfigError(f"memory.{key} must be 0 or more. Received: {value}")
