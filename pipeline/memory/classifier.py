"""The configured classifier costed: its rows per training phase, its estimate for a run
(``estimate_for_run``, what train records) and its measured throughput.

The one module here that builds a Keras model (without pretrained weights: counting needs
none, and nothing is downloaded); Keras is imported inside the functions that use it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.config import Config, resolve_precision
from pipeline.memory.estimate import CPU_OVERHEAD, estimate_layers
from pipeline.memory.keras_graph import layers_from_model
from pipeline.memory.record import UNAVAILABLE, MemoryEstimate, RunMemory
from pipeline.memory.spec import Layer
from pipeline.units import parse_quantity


def configured_overhead(cfg: Config) -> float:
    """memory.overhead, or the CPU figure measured by `make bench-memory`."""
    return cfg.memory.overhead or CPU_OVERHEAD


def configured_slots(cfg: Config) -> int:
    """memory.optimizer_slots, and one more when training keeps a moving average of the
    weights (train.ema: Keras's Adam holds it as a third value per trainable parameter)."""
    return cfg.memory.optimizer_slots + (1 if cfg.train.ema > 0 else 0)


def configured_kernels(cfg: Config) -> str:
    """memory.kernels, with auto decided: the CPU kernels this TensorFlow runs."""
    if cfg.memory.kernels != "auto":
        return cfg.memory.kernels
    from pipeline.compat import onednn_enabled

    return "onednn" if onednn_enabled() else "eigen"


def model_phases(
    cfg: Config, num_classes: int, head: bool = True
) -> tuple[dict[str, list[Layer]], Any]:
    """Rows of the configured classifier (or its base alone) for each training phase, and the
    model (left frozen as in the last phase). Built without pretrained weights: counting
    needs none, and nothing is downloaded.

    Where the run loads pretrained weights, its variables hold the loaded values, not the
    chunks their initializers left (docs/memory.md, "What does not grow with the batch"),
    so the rows say none was drawn."""
    from pipeline.model import build_classifier, classifier_spec, freeze_for_phase, get_base

    spec = replace(classifier_spec(cfg), weights="none")
    model = build_classifier(spec, num_classes)
    target = model if head else get_base(model)
    if not spec.backbone.pretrained:
        freeze_for_phase(model, spec, 1)
        return {"from scratch: every layer trains": layers_from_model(target)}, target
    loaded = cfg.model.weights != "none"
    phases = {}
    for phase, label in (
        (1, "phase 1: base frozen"),
        (2, f"phase 2: layers after {spec.fine_tune_after} train"),
    ):
        freeze_for_phase(model, spec, phase)
        rows = layers_from_model(target)
        phases[label] = _as_loaded(rows) if loaded else rows
    return phases, target


def _as_loaded(rows: list[Layer]) -> list[Layer]:
    """Rows whose variables hold loaded values: none was drawn by an initializer."""
    return [replace(r, variables=tuple(v._replace(drawn=False) for v in r.variables)) for r in rows]


def measure_throughput(
    model: Any, train_flops_per_image: int, batch: int = 4, steps: int = 3
) -> float:
    """Achieved FLOP/s of real training steps (Adam) of ``model`` on random data, after one
    warm-up step that traces the graph. The model is compiled here."""
    import time

    import keras
    import numpy as np

    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, *model.input_shape[1:])).astype("float32")
    y = np.zeros((batch, *model.output_shape[1:]), "float32")
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return train_flops_per_image * batch * steps / (time.perf_counter() - start)


def estimate_for_run(cfg: Config, num_classes: int) -> MemoryEstimate:
    """The estimate for a configured run, for the training summary and evaluation report:
    parameters, per-phase training memory at the configured batch, inference memory and
    FLOPs per image. Builds the model (without weights) but runs nothing."""
    est = estimate_classifier(cfg, num_classes, head=True, dtype="float32")[0]
    return MemoryEstimate.from_estimate(est)


def run_memory_estimate(cfg: Config, num_classes: int) -> RunMemory:
    """``estimate_for_run``, or why it could not be made: a finished run, or a report, goes
    on without it (nothing measured yet)."""
    try:
        return RunMemory(estimate_for_run(cfg, num_classes))
    except Exception as exc:
        return RunMemory(error=f"{UNAVAILABLE}: {exc}")


def estimate_classifier(
    cfg: Config, num_classes: int, head: bool, dtype: str
) -> tuple[dict[str, Any], dict[str, list[Layer]], Any]:
    """``estimate_layers`` for the configured classifier (or its base alone), phase by phase;
    also returns the phases' rows and the model."""
    from pipeline.backbones import check_input_size, get_backbone
    from pipeline.training.runtime import local_gpus

    check_input_size(get_backbone(cfg.model.backbone), cfg.image_size)
    budget = parse_quantity(cfg.memory.budget)
    phases, model = model_phases(cfg, num_classes, head)
    first = next(iter(phases.values()))
    est = estimate_layers(
        first,
        cfg.input.batch_size,
        dtype,
        resolve_precision(cfg.train.precision, gpu=bool(local_gpus())),
        configured_slots(cfg),
        configured_overhead(cfg),
        phases,
        budget,
        configured_kernels(cfg),
    )
    size = cfg.image_size
    est["source"] = {
        "backbone": cfg.model.backbone,
        "image_size": size,
        "head": head,
        "classes": num_classes if head else None,
        "input": f"{size}x{size}x3",
        "keras_count_params": model.count_params(),
    }
    est["budget"] = budget
    return est, phases, model
