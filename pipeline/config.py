"""One configuration object: every default lives here, and nowhere else.

Precedence, lowest to highest: these defaults < a config file (``--config``, TOML, YAML or
JSON) < ``section.key=value`` overrides on the command line (Make variables end up there).
The resolved configuration is written next to every output (``config.json``), and that file
can be fed back with ``--config`` to repeat a run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.recipes import config_path, read_config_file
from pipeline.validation import ConfigError, check_config, literal_choices

# The resolved configuration, written next to every output (a data set, a run, a report).
CONFIG_FILE = "config.json"


# Allowed values of the options that take a word: declared once, here, as types. Validation
# (pipeline.validation) and the README's option table read them from the annotations.
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
Strategy = Literal["auto", "default", "mirrored", "multi_worker"]
ClassWeights = Literal["auto", "on", "off"]
HeadFit = Literal["exact", "gradient"]
Schedule = Literal["cosine", "plateau"]
Tta = Literal["none", "flip"]
Kernels = Literal["auto", "eigen", "onednn"]
EvalSplit = Literal["test", "val"]
# "all" is the three TFLite variants; "tflite" is float32.
ExportFormat = Literal["all", "tflite", "tflite-fp16", "tflite-int8", "saved_model"]


@dataclass
class PathsConfig:
    data: str = "data"  # manifests, downloads, caches: data/<dataset>/
    models: str = "models"  # trained runs: models/<run>/
    reports: str = "reports"  # figures and reports: reports/<dataset or run>/


@dataclass
class DataConfig:
    dataset: str = "flowers"  # flowers | intel | folder:PATH
    val_fraction: float = 0.15  # probability that an image lands in validation
    test_fraction: float = 0.15  # ... in test (ignored when the source has its own test set)
    split_seed: int = 42  # changes every image's split; keep it fixed across experiments
    min_side: int = 32  # images with a shorter side below this are skipped
    max_pixels: int = 178_956_970  # larger images are skipped as decompression bombs
    near_duplicate_bits: int = 6  # near-copies (hashes this close in bits) share a split; -1 off
    small_class_warning: int = 100  # warn when a class has fewer images than this
    workers: int = 0  # processes that check images; 0 = one per CPU core
    cache_size: int = 0  # >0: a cache of decoded images with this shorter side (342 fits 299)
    recheck: bool = False  # check every file again instead of reusing checks.jsonl


@dataclass
class InputConfig:
    image_size: int = 0  # square side the model sees; 0 = the backbone's own
    batch_size: int = 32  # per replica; the global batch is this x the replicas
    crop_area_min: float = 0.25  # random resized crop: smallest fraction of the image kept
    crop_aspect_min: float = 0.75  # ... aspect-ratio range [min, 1/min]
    eval_crop_fraction: float = 0.875  # evaluation: resize to size/fraction, centre-crop
    flip: bool = True  # random horizontal flip
    rotation: float = 0.0  # Keras RandomRotation factor (fraction of a full turn); costly
    zoom: float = 0.0  # Keras RandomZoom factor; costly
    contrast: float = 0.0  # Keras RandomContrast factor
    brightness: float = 0.0  # Keras RandomBrightness factor
    randaugment: bool = False  # Keras RandAugment (2 ops, magnitude 0.2)
    mixup: float = 0.0  # Keras MixUp alpha; 0 = off
    cutmix: float = 0.0  # Keras CutMix alpha; 0 = off
    shuffle_buffer: int = 2048  # training shuffle buffer (elements are file paths: cheap)
    deterministic: bool = True  # fixed element order in parallel maps (reproducible)
    tta: Tta = "none"  # evaluate and predict: flip averages with the mirror image


@dataclass
class ModelConfig:
    backbone: str = "inception_v3"  # a name from the table in pipeline/backbones/
    weights: str = "imagenet"  # imagenet | none | /path/to/weights.h5
    alpha: float = 1.0  # width multiplier, MobileNet family only
    dropout: float = 0.2  # before the softmax head
    fine_tune_after: str = ""  # last layer frozen in phase 2; "" = the backbone's own
    cnn_width: int = 32  # small_cnn: feature maps of the first block (doubling per block)
    cnn_blocks: int = 4  # small_cnn: conv-BN-ReLU-pool blocks


@dataclass
class TrainConfig:
    seed: int = 42  # initialisation, shuffling, augmentation
    run_name: str = ""  # models/<run_name>/; "" = <dataset>-<backbone>-<timestamp>
    head_fit: HeadFit = "exact"  # phase 1: logistic regression (C chosen on val) or Adam
    head_epochs: int = 10  # phase 1 with head_fit=gradient: frozen base, new head
    head_lr: float = 1e-3  # phase 1 with head_fit=gradient: Adam's learning rate
    fine_tune_epochs: int | None = None  # phase 2: none = the backbone's own; 0 skips phase 2
    fine_tune_lr: float = 1e-4  # phase 2: the peak learning rate
    fine_tune_schedule: Schedule = "cosine"  # phase 2: warm-up then cosine, or on plateau
    warmup_epochs: float = 1.0  # cosine: linear warm-up from 0 to fine_tune_lr
    # Phase 2 is kept only if its paired per-image val-loss gain over phase 1 is more than
    # this many standard errors (1.645: one-sided 95%); 0 keeps it on any gain.
    keep_min_z: float = 1.645  # keep phase 2 when its paired val gain exceeds this z
    patience: int = 3  # early stopping on validation loss, best weights restored
    lr_patience: int = 2  # plateau schedule: epochs without gain before the rate drops
    lr_factor: float = 0.2  # plateau schedule: factor the rate drops by
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy
    ema: float = 0.0  # momentum of a moving average of the weights; 0 = off
    class_weights: ClassWeights = "auto"  # auto weights classes only when imbalanced
    cache_features: bool = True  # phase 1 without augmentation trains on cached features
    head_augment: bool = False  # augment in phase 1 (then features cannot be cached)
    precision: Precision = "auto"  # auto = mixed_float16 on a GPU, float32 elsewhere
    xla: bool = False  # jit_compile the training step
    strategy: Strategy = "auto"  # auto = several machines > several GPUs > one device
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism
    tensorboard: bool = False  # write TensorBoard logs under the run folder


@dataclass
class EvalConfig:
    run: str = ""  # models/<run>; "" = the latest run
    split: EvalSplit = "test"  # the split evaluated
    top_k: int = 5  # top-k accuracy reported
    gallery_size: int = 24  # worst mistakes shown
    unknown_photos: str = ""  # folder of photos of no class: how well unknown_score finds them


@dataclass
class PredictConfig:
    input: str = ""  # folder of images, searched recursively
    output: str = "predictions.csv"  # the CSV written
    top_k: int = 3  # classes per row
    sort_into: str = ""  # copy (never move) each image into <sort_into>/<class>/
    model: str = ""  # an exported models/<run>/export/*.tflite instead of model.keras
    batch_size: int = 0  # images per model call; 0 = the run's input.batch_size
    unknown_rate: float = 0.05  # share of validation photos flagged unknown: sets the threshold


@dataclass
class ExportConfig:
    format: ExportFormat = "all"  # all = the three TFLite files; tflite is float32
    max_drop: float = 0.02  # warn when an export's test accuracy is this far below Keras's
    calibration_images: int = 200  # int8: training images that calibrate the quantisation
    latency_images: int = 20  # CPU latency: batch 1 over this many images
    unknown: bool = True  # files answer unknown_score too (the training features inside)


@dataclass
class MemoryConfig:
    budget: str = "16GiB"  # device memory to fit a training run into
    optimizer_slots: int = 2  # values per trainable parameter (Adam: 2; train.ema adds 1)
    overhead: float = 0.0  # framework workspace x per-image memory; 0 = measured
    throughput: str = ""  # FLOP/s for epoch times: 50T, 2.5e12, measure; "" = none
    epoch_images: int = 0  # images per epoch for the time estimate; 0 = count train.csv
    kernels: Kernels = "auto"  # CPU kernels the estimate models; auto = what TensorFlow runs


@dataclass
class ExperimentConfig:
    name: str = ""  # reports/experiments/<name>/; "" = the preset's name, else required
    grid: str = ""  # "section.key=v1,v2 section.key=v3": every combination is a cell
    repeats: int = 3  # runs per cell, seeds train.seed, train.seed+1, ...
    preset: str = ""  # a sweep in pipeline/configs/presets/<preset>.toml; "" = none
    threshold: float = 0.0  # smallest-first presets: the smallest model above this
    retry_failed: bool = False  # on resume, run failed runs again
    results: str = ""  # summarise these results.csv files too (comma-separated)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def image_size(self) -> int:
        """input.image_size, or the backbone's ImageNet size when that is 0 (the default), so
        that switching backbones does not leave one backbone's size on another."""
        from pipeline.backbones import get_backbone

        return self.input.image_size or get_backbone(self.model.backbone).default_size

    @property
    def fine_tune_epochs(self) -> int:
        """train.fine_tune_epochs, or the backbone's own when it is not set: the recipe's
        per-backbone value (pipeline/backbones/), as the image size is."""
        return phase2_epochs(self.train.fine_tune_epochs, self.model.backbone)

    def dataset_dir(self) -> Path:
        """Where this data set's manifests live: data/<dataset id>/, named by the source
        itself (pipeline.data.provenance.dataset_id), never by a base name alone."""
        from pipeline.data.provenance import dataset_id

        return Path(self.paths.data) / dataset_id(self.data.dataset)


def dataset_name(dataset: str) -> str:
    """Folder name for a data set spec: 'flowers', 'intel', or the folder's own name."""
    if dataset.startswith("folder:"):
        name = Path(dataset[len("folder:") :].rstrip("/\\")).name
        return name or "folder"
    return dataset


def resolve_precision(precision: str, gpu: bool) -> str:
    """train.precision with 'auto' decided: mixed_float16 on a GPU, float32 elsewhere. The one
    rule, for the train stage and the memory estimate alike.

    >>> resolve_precision("auto", gpu=True), resolve_precision("auto", gpu=False)
    ('mixed_float16', 'float32')
    >>> resolve_precision("mixed_bfloat16", gpu=False)
    'mixed_bfloat16'
    """
    if precision != "auto":
        return precision
    return "mixed_float16" if gpu else "float32"


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def valid_keys() -> list[str]:
    """Every 'section.key' name an override may use."""
    return [f"{name}.{key}" for name, cls in _sections().items() for key in _field_types(cls)]


def _field_help(section_cls: type) -> dict[str, str]:
    """Each option's meaning: the comment on its line, since every default above sits on one
    commented line."""
    import inspect

    found = (FIELD_LINE.match(line) for line in inspect.getsource(section_cls).splitlines())
    return {m["name"]: m["help"] for m in found if m}


FIELD_LINE = re.compile(r"^    (?P<name>\w+): [^=]+ = .*?  # (?P<help>.+)$")


def options_markdown(make_variables: dict[str, str] | None = None) -> str:
    """The README's option table, made from the sections above so that the two cannot
    disagree (tests/test_config.py compares them); ``make_variables`` maps an option to the
    Make variable that sets it (the Makefile's overrides)."""
    make = make_variables or {}
    lines = [
        "| option | make | default | values | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cls in _sections().items():
        hints, helps = _field_types(cls), _field_help(cls)
        for f in dataclasses.fields(cls):
            key = f"{name}.{f.name}"
            allowed = literal_choices(hints[f.name])
            values = " \\| ".join(allowed) if allowed else _type_name(hints[f.name])
            variable = f"`{make[key]}`" if key in make else ""
            help_text = helps[f.name].replace("|", "\\|")
            default = json.dumps(f.default)
            lines.append(f"| `{key}` | {variable} | `{default}` | {values} | {help_text} |")
    return "\n".join(lines)


def phase2_epochs(setting: int | None, backbone: str) -> int:
    """Phase 2's epochs: train.fine_tune_epochs as set, else ``backbone``'s own."""
    from pipeline.backbones import get_backbone

    return setting if setting is not None else get_backbone(backbone).fine_tune_epochs


def _type_name(annotation: Any) -> str:
    """'int', or 'int or none' for an option that may be left unset."""
    args = typing.get_args(annotation)
    if type(None) in args:
        return " or ".join(a.__name__ for a in args if a is not type(None)) + " or none"
    return annotation.__name__


def _coerce(key: str, raw: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        annotation = args[0]
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true or false. Received: {raw!r}")
    if annotation is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key} expects an integer. Received: {raw!r}")
        try:
            value = float(raw) if isinstance(raw, str) else raw
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects an integer. Received: {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number. Received: {raw!r}") from None
    return str(raw)


def _apply(cfg: Config, section: str, key: str, raw: Any, origin: str) -> None:
    sections = _sections()
    if section not in sections:
        raise ConfigError(
            f"Unknown configuration section {section!r} in {origin}. "
            f"Valid sections: {', '.join(sections)}."
        )
    types_ = _field_types(sections[section])
    if key not in types_:
        valid = ", ".join(f"{section}.{k}" for k in types_)
        raise ConfigError(f"Unknown option {section}.{key} in {origin}. Valid options: {valid}.")
    setattr(getattr(cfg, section), key, _coerce(f"{section}.{key}", raw, types_[key]))


def parse_override(text: str) -> tuple[str, str, str]:
    """'train.head_lr=3e-4' -> ('train', 'head_lr', '3e-4')."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(
            f"Overrides are written section.key=value, for example train.head_lr=3e-4. "
            f"Received: {text!r}"
        )
    return section, key, value.strip()


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] = (),
    prepare: Callable[[Config], Config] | None = None,
) -> Config:
    """Defaults, then the file, then the overrides, then ``prepare`` (a stage's own last
    word, e.g. the experiment stage's preset); validated before anything runs."""
    cfg = Config()
    if config_file:
        for section, values in read_config_file(config_path(config_file)).items():
            for key, raw in values.items():
                _apply(cfg, section, key, raw, str(config_file))
    for text in overrides:
        section, key, raw = parse_override(text)
        _apply(cfg, section, key, raw, "the command line")
    if prepare is not None:
        cfg = prepare(cfg)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every check of option values (``pipeline.validation``); every stage runs it."""
    check_config(cfg)


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of cfg with {'section.key': value} applied and validated."""
    new = dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name)) for name in _sections()}
    )
    for name, raw in overrides.items():
        section, _, key = name.partition(".")
        _apply(new, section, key, raw, "overrides")
    validate(new)
    return new


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the effective configuration (JSON, loadable with --config) atomically."""
    from pipeline.files import atomic_write_text

    return atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")
