"""Memory and compute estimates: what fits before training, what it costs, what to change.

Public: ``estimate_layers`` (a layer list from ``pipeline.layerspec``), ``estimate_model`` (a
Keras model), ``textbook_training``, ``realistic_training``, ``max_batch``,
``rank_remedies``, ``estimate_for_run`` (for the training summary and the evaluation report)
and ``estimate_memory`` (the ``memory`` stage). Which tensors are alive when, in values per
image, is worked out in ``pipeline.layerspec``; this module turns values into bytes.

Conventions: sizes are counted in values per image and turned into bytes last; 1 MB is
10^6 bytes and 1 MiB 2^20; FLOPs are 2 per multiply-add plus 1 per elementwise operation;
a training step costs the forward pass plus, for every layer a gradient flows through, one
forward's worth for the input gradient and, if it trains, one more for the weight gradient.

Two training figures, on purpose. The *textbook minimum* keeps every layer's output for
every image of the batch, plus the input batch and the parameters (the classic exercise's
answer). The *realistic* figure keeps only what the backward pass of the trainable layers
reads, simulated tensor by tensor, adds float32 gradients and optimizer state for the
trainable parameters, and multiplies the per-image part by ``CPU_OVERHEAD``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.files import atomic_write_text, generated_dir, write_json
from pipeline.layerspec import (
    Layer,
    checkpointed_peak,
    inference_peak,
    layers_from_model,
    parse_layers,
    training_flops,
    training_peak,
)
from pipeline.units import format_bytes, format_count, parse_quantity

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
MASTER_BYTES = 4  # weights, gradients and optimizer state stay float32 under mixed precision
# Framework workspace on top of the simulated per-image tensors: allocator rounding, oneDNN
# scratch and layout copies, gradient temporaries, and tensors kept alive longer because the
# executor runs independent ops in parallel. Measured with `make bench-memory` on this
# project's CPU machine (TensorFlow 2.21, 2 cores): the slope of peak RSS against batch size
# (one process per batch, 4 to 64) divided by the simulated per-image bytes was 1.53
# (InceptionV3, 128 px, phase 2), 1.24 (InceptionV3, 128 px, every layer training) and 1.20
# (small CNN, 64 px); this is their geometric mean. A second, independent run gave 1.40,
# 1.59 and 1.28: with this constant the estimate was off by -6%, -17% and +3% per image
# (benchmarks/results/memory.json). GPUs (cuDNN workspace) may differ: measure there
# (`make bench-memory` uses the GPU's peak) and set memory.overhead.
CPU_OVERHEAD = 1.32
LAYER_COLUMNS = ("#", "layer", "type", "output", "activations", "params", "trainable", "MACs")
LAYER_COLUMNS += ("FLOPs", "working")
REMEDY_SIDE_STEP = 32  # smaller-input remedy: image sides are tried in steps of this
DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)


# ----------------------------------------------------------------------------- estimates


def textbook_training(layers: list[Layer], batch: int, dtype: str = "float32") -> dict[str, int]:
    """Every activation of every image kept for backpropagation, plus the input batch and the
    parameters: the classic exercise's bare minimum (no gradients, no optimizer state)."""
    size = DTYPE_BYTES[dtype]
    activations = sum(r.size for r in layers[1:])
    parts = {
        "activations": batch * activations * size,
        "input": batch * layers[0].size * size,
        "parameters": sum(r.params for r in layers) * size,
    }
    return {**parts, "total": sum(parts.values())}


def realistic_training(
    layers: list[Layer],
    batch: int,
    precision: str = "float32",
    optimizer_slots: int = 2,
    overhead: float = CPU_OVERHEAD,
) -> dict[str, Any]:
    """fixed + batch x per_image: float32 weights, gradients and optimizer slots for the
    trainable part, float16 weight copies under mixed precision, and the simulated per-image
    peak (half-size values under mixed precision) times the framework overhead."""
    params = sum(r.params for r in layers)
    trainable = sum(r.trainable for r in layers)
    mixed = precision.startswith("mixed")
    peak = training_peak(layers)
    fixed = {
        "weights": params * MASTER_BYTES,
        "weight_copies": params * 2 if mixed else 0,
        "gradients": trainable * MASTER_BYTES,
        "optimizer": trainable * optimizer_slots * MASTER_BYTES,
    }
    per_image = math.ceil(peak["values"] * (2 if mixed else 4) * overhead)
    return {
        **fixed,
        "fixed": sum(fixed.values()),
        "per_image": per_image,
        "activations": batch * per_image,
        "total": sum(fixed.values()) + batch * per_image,
        "batch": batch,
        "precision": precision,
        "overhead": overhead,
        "peak": peak,
    }


def max_batch(cost: Callable[[int], float], budget: float, limit: int = 1 << 20) -> int:
    """Largest batch size whose cost fits the budget (0 when not even one image fits).

    ``cost`` must grow with the batch size; doubling then bisection, so it is called
    O(log batch) times and works for any monotone cost, not only linear ones.
    """
    if cost(1) > budget:
        return 0
    lo, hi = 1, 2
    while hi <= limit and cost(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return lo


def _freeze_lower_half(layers: list[Layer]) -> list[Layer] | None:
    """The same rows with the lower half of the trainable layers frozen (None if < 2 train)."""
    from dataclasses import replace

    training = [i for i, r in enumerate(layers) if r.trainable]
    if len(training) < 2:
        return None
    frozen = set(training[: len(training) // 2])
    return [replace(r, trainable=0) if i in frozen else r for i, r in enumerate(layers)]


def rank_remedies(
    layers: list[Layer],
    batch: int,
    budget: float,
    precision: str,
    optimizer_slots: int,
    overhead: float,
    image_side: int | None = None,
    min_side: int = 32,
) -> list[dict[str, Any]]:
    """What to change when the run does not fit, largest saving first, each with its figure."""

    def run(rows: list[Layer] = layers, b: int = batch, p: str = precision) -> dict[str, Any]:
        return realistic_training(rows, b, p, optimizer_slots, overhead)

    now = run()
    options: list[tuple[str, float, str]] = []
    fits = max_batch(lambda b: now["fixed"] + b * now["per_image"], budget, limit=batch)
    if 0 < fits < batch:
        options.append(
            (
                f"batch size {fits}",
                run(b=fits)["total"],
                "the largest that fits; scale the learning rate with it",
            )
        )
    if not precision.startswith("mixed"):
        options.append(
            (
                "mixed precision (train.precision=mixed_float16)",
                run(p="mixed_float16")["total"],
                "half-size activations, float32 master weights; needs a GPU/TPU",
            )
        )
    if (half := _freeze_lower_half(layers)) is not None:
        options.append(
            (
                "freeze the lower half of the trainable layers",
                run(half)["total"],
                "set model.fine_tune_after to a later layer",
            )
        )
    if image_side:
        side = image_side - REMEDY_SIDE_STEP

        def scaled(side: int) -> float:
            return now["fixed"] + now["activations"] * (side / image_side) ** 2

        while side > min_side and scaled(side) > budget:
            side -= REMEDY_SIDE_STEP
        side = max(side, min_side)
        if side < image_side:
            options.append(
                (
                    f"input size {side} (input.image_size={side})",
                    scaled(side),
                    "approximate: activations scale with the pixel count",
                )
            )
    ckpt = math.ceil(
        checkpointed_peak(layers) * (2 if precision.startswith("mixed") else 4) * overhead
    )
    options.append(
        (
            "gradient checkpointing",
            now["fixed"] + batch * ckpt,
            "keeps ~sqrt(n) layer outputs, recomputes the rest: about +33% compute",
        )
    )
    for n in DEVICE_COUNTS:
        per_device = run(b=math.ceil(batch / n))["total"]
        if per_device <= budget or n == DEVICE_COUNTS[-1]:
            options.append(
                (
                    f"{n} devices (data parallel)",
                    per_device,
                    f"per device, batch {math.ceil(batch / n)} each",
                )
            )
            break
    rounded = [(name, math.ceil(total), note) for name, total, note in options]
    ranked = sorted(
        (
            (now["total"] - total, name, total, note)
            for name, total, note in rounded
            if total < now["total"]
        ),
        reverse=True,
    )
    return [
        {"remedy": name, "bytes": total, "saves": saving, "fits": total <= budget, "note": note}
        for saving, name, total, note in ranked
    ]


def estimate_layers(
    layers: list[Layer],
    batch: int,
    dtype: str = "float32",
    precision: str = "float32",
    optimizer_slots: int = 2,
    overhead: float = CPU_OVERHEAD,
    phases: dict[str, list[Layer]] | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """Everything about one network: per-layer rows, parameter, inference and training memory.

    ``phases`` maps a phase label to the same rows with that phase's trainable counts
    (default: one phase, ``layers`` as given).
    """
    size = DTYPE_BYTES[dtype]
    phases = phases or {"all layers train": layers}
    last = list(phases.values())[-1]  # the table shows the last phase's trainable counts
    params = sum(r.params for r in layers)
    peak, peak_at = inference_peak(layers)
    result: dict[str, Any] = {
        "batch": batch,
        "dtype": dtype,
        "precision": precision,
        "overhead": overhead,
        "optimizer_slots": optimizer_slots,
        "layers": [
            {
                "name": r.name,
                "type": r.kind,
                "shape": list(r.shape),
                "activations": r.size,
                "params": r.params,
                "trainable": t.trainable,
                "macs": r.macs,
                "flops": r.flops,
                "working": r.working,
            }
            for r, t in zip(layers, last)
        ],
        "totals": {
            "params": params,
            "input": layers[0].size,
            "activations": sum(r.size for r in layers[1:]),
            "macs": sum(r.macs for r in layers),
            "flops": sum(r.flops for r in layers),
        },
        "parameter_bytes": {
            name: params * DTYPE_BYTES[name] for name in ("float32", "float16", "int8")
        },
        "inference": {
            "peak_values": peak,
            "peak_at": peak_at,
            "activation_bytes": peak * size,
            "parameter_bytes": params * size,
            "bytes": (peak + params) * size,
        },
        "phases": {},
    }
    for label, rows in phases.items():
        realistic = realistic_training(rows, batch, precision, optimizer_slots, overhead)
        phase = {
            "trainable": sum(r.trainable for r in rows),
            "textbook": textbook_training(rows, batch, dtype),
            "realistic": realistic,
            "train_flops": training_flops(rows),
        }
        if budget:
            fixed, per_image = realistic["fixed"], realistic["per_image"]
            phase["max_batch"] = max_batch(lambda b, f=fixed, i=per_image: f + b * i, budget)
            phase["fits"] = realistic["total"] <= budget
        result["phases"][label] = phase
    return result


# ----------------------------------------------------------------------------- Keras models


def resolve_precision(precision: str, gpu: bool | None = None) -> str:
    """'auto' is mixed_float16 on a GPU and float32 elsewhere, as the train stage decides."""
    if precision != "auto":
        return precision
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    return "mixed_float16" if gpu else "float32"


def estimate_model(
    model: Any,
    batch: int,
    dtype: str = "float32",
    precision: str = "float32",
    optimizer_slots: int = 2,
    overhead: float = CPU_OVERHEAD,
    budget: float | None = None,
) -> dict[str, Any]:
    """``estimate_layers`` for any functional or Sequential Keras model, as currently frozen."""
    return estimate_layers(
        layers_from_model(model), batch, dtype, precision, optimizer_slots, overhead, budget=budget
    )


def model_phases(
    cfg: Config, num_classes: int, head: bool = True
) -> tuple[dict[str, list[Layer]], Any]:
    """Rows of the configured classifier (or its base alone) for each training phase, and the
    model (left frozen as in the last phase). Built without pretrained weights: counting
    needs none, and nothing is downloaded."""
    from pipeline.backbones import get_backbone
    from pipeline.config import with_overrides
    from pipeline.model import build_classifier, fine_tune_cut, freeze_for_phase, get_base

    cfg = with_overrides(cfg, {"model.weights": "none"})
    model = build_classifier(cfg, num_classes)
    target = model if head else get_base(model)
    if not get_backbone(cfg.model.backbone).pretrained:
        freeze_for_phase(model, cfg, 1)
        return {"from scratch: every layer trains": layers_from_model(target)}, target
    phases = {}
    for phase, label in (
        (1, "phase 1: base frozen"),
        (2, f"phase 2: layers after {fine_tune_cut(cfg)} train"),
    ):
        freeze_for_phase(model, cfg, phase)
        phases[label] = layers_from_model(target)
    return phases, target


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


def _summary(est: dict[str, Any]) -> dict[str, Any]:
    """The compact, JSON-able figures a training summary or evaluation report embeds."""
    return {
        "source": est.get("source", {}),
        "batch_size": est["batch"],
        "precision": est["precision"],
        "params": est["totals"]["params"],
        "parameter_bytes": est["parameter_bytes"],
        "inference_bytes": est["inference"]["bytes"],
        "flops_per_image": {
            "forward": est["totals"]["flops"],
            "train": {k: p["train_flops"] for k, p in est["phases"].items()},
        },
        "training": {
            label: {
                "trainable": p["trainable"],
                "textbook_bytes": p["textbook"]["total"],
                "realistic_bytes": p["realistic"]["total"],
                "fixed_bytes": p["realistic"]["fixed"],
                "per_image_bytes": p["realistic"]["per_image"],
                "max_batch": p.get("max_batch"),
                "fits": p.get("fits"),
            }
            for label, p in est["phases"].items()
        },
        "budget_bytes": est.get("budget"),
        "overhead": est["overhead"],
    }


def phases_run(training: dict[str, Any], run_phases: dict[str, Any]) -> dict[str, Any]:
    """The per-phase figures of an estimate (``estimate_for_run(...)["training"]``, keyed by
    ``model_phases``'s labels) for the phases a run really trained, by its summary's
    ``phases`` ({"1": {"epochs": 3, ...}, "2": ...}): EPOCHS=0 drops phase 2."""
    ran = {number for number, phase in run_phases.items() if phase.get("epochs")}
    return {
        label: figures
        for label, figures in training.items()
        if not label.startswith("phase ") or label.split(":")[0].split()[-1] in ran
    }


def estimate_for_run(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The estimate for a configured run, for the training summary and evaluation report:
    parameters, per-phase training memory at the configured batch, inference memory and
    FLOPs per image. Builds the model (without weights) but runs nothing."""
    est = _estimate_backbone(cfg, num_classes, head=True, dtype="float32")[0]
    return _summary(est)


# ----------------------------------------------------------------------------- the stage


def _overhead(cfg: Config) -> float:
    return cfg.memory.overhead or CPU_OVERHEAD


def _estimate_backbone(
    cfg: Config, num_classes: int, head: bool, dtype: str
) -> tuple[dict[str, Any], dict[str, list[Layer]], Any]:
    from pipeline.backbones import check_input_size, get_backbone

    check_input_size(get_backbone(cfg.model.backbone), cfg.image_size)
    budget = parse_quantity(cfg.memory.budget)
    phases, model = model_phases(cfg, num_classes, head)
    first = next(iter(phases.values()))
    est = estimate_layers(
        first,
        cfg.input.batch_size,
        dtype,
        resolve_precision(cfg.train.precision),
        cfg.memory.optimizer_slots,
        _overhead(cfg),
        phases,
        budget,
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


def _dataset_file_count(cfg: Config, name: str) -> int | None:
    path = cfg.dataset_dir() / name
    if not path.is_file():
        return None
    if name.endswith(".json"):
        import json

        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, encoding="utf-8") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def estimate_memory(
    cfg: Config,
    layers: str = "",
    input_shape: str = "",
    dtype: str = "float32",
    head: bool = True,
    num_classes: int | None = None,
    table: bool = True,
) -> list[Path]:
    """The ``memory`` stage: print the per-layer table and the summary for a layer spec
    (``layers`` + ``input_shape``) or the configured backbone, and write both as Markdown and
    JSON under reports/memory/. Returns the paths written."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}. Received: {dtype!r}")
    if bool(layers) != bool(input_shape):
        raise ValueError(
            "--layers and --input go together, e.g. --input 200x300x3 "
            "--layers conv3x3s2same:100,conv3x3s2same:200"
        )
    budget = parse_quantity(cfg.memory.budget)
    batch, slots, overhead = cfg.input.batch_size, cfg.memory.optimizer_slots, _overhead(cfg)
    notes: list[str] = []
    model = None
    if layers:
        rows = parse_layers(input_shape, layers)
        precision = resolve_precision(cfg.train.precision, gpu=False)
        phases = {"all layers train": rows}
        est = estimate_layers(rows, batch, dtype, precision, slots, overhead, phases, budget)
        shape = "x".join(map(str, rows[0].shape))
        est["source"] = {"input": shape, "layers": layers}
        est["budget"] = budget
        digest = hashlib.sha1(layers.encode()).hexdigest()[:8]
        name = f"layers-{shape}-{digest}-b{batch}"
        side = rows[0].shape[0] if rows[0].shape[0] == rows[0].shape[1] else None
    else:
        if num_classes is None:
            num_classes = _dataset_file_count(cfg, "classes.json")
            if num_classes is None:
                num_classes = 5
                notes.append(
                    "5 classes assumed (no classes.json yet): run `make data` or pass --classes"
                )
        est, phases, model = _estimate_backbone(cfg, num_classes, head, dtype)
        side = cfg.image_size
        name = f"{cfg.model.backbone}-{side}-b{batch}" + ("" if head else "-nohead")
    worst = max(phases, key=lambda k: est["phases"][k]["realistic"]["total"])
    est["remedies"] = (
        []
        if est["phases"][worst]["fits"]
        else rank_remedies(phases[worst], batch, budget, est["precision"], slots, overhead, side)
    )
    est["remedies_for"] = worst
    _add_epoch_time(est, cfg, model, notes)
    est["notes"] = notes
    text = render_report(est)
    print(text if table else render_report(est, layer_table=False))
    out = generated_dir(Path(cfg.paths.reports) / "memory") / name
    paths = [
        atomic_write_text(out.with_suffix(".md"), text),
        write_json(out.with_suffix(".json"), est),
    ]
    print(f"Wrote {paths[0]} and {paths[1].name}")
    return paths


def _add_epoch_time(est: dict[str, Any], cfg: Config, model: Any, notes: list[str]) -> None:
    images = cfg.memory.epoch_images or _dataset_file_count(cfg, "train.csv")
    setting = cfg.memory.throughput.strip().lower()
    throughput, origin = None, ""
    if setting == "measure":
        if model is None:
            raise ValueError(
                "memory.throughput=measure times a Keras model; with --layers give "
                "a number instead, e.g. memory.throughput=2T"
            )
        last = est["phases"][next(reversed(est["phases"]))]
        batch = min(est["batch"], 8)
        throughput = measure_throughput(model, last["train_flops"], batch)
        origin = f"measured: 3 training steps at batch {batch} on this machine"
    elif setting:
        throughput, origin = parse_quantity(setting, "memory.throughput"), "memory.throughput"
    est["throughput"] = {"flops_per_second": throughput, "origin": origin, "images": images}
    if throughput and images:
        for phase in est["phases"].values():
            phase["epoch_seconds"] = images * phase["train_flops"] / throughput
    elif not throughput:
        notes.append(
            "No epoch time: set memory.throughput=measure (a short timed run here) or "
            "the device's FLOP/s, e.g. memory.throughput=50T"
        )
    else:  # a throughput (measured or given) but no epoch size: still say what it is
        notes.append(
            f"Throughput {format_count(throughput)}FLOP/s ({origin}). No epoch time: no "
            "train.csv yet to count the images of an epoch; run `make data` or set "
            "memory.epoch_images"
        )


# ----------------------------------------------------------------------------- report


def _table(header: Sequence[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _why(est: dict[str, Any]) -> str:
    return (
        "The textbook minimum keeps every layer's output for every image and ignores "
        "gradients and optimizer state; the realistic figure keeps only the tensors the "
        "backward pass of the trainable layers reads (simulated tensor by tensor), but adds "
        f"float32 gradients, {est['optimizer_slots']} optimizer values per trainable parameter"
        f"{', float16 weight copies' if est['precision'].startswith('mixed') else ''} and the "
        f"measured framework overhead ({est['overhead']:.2f}x per image)."
    )


def render_report(est: dict[str, Any], layer_table: bool = True) -> str:
    """Markdown: per-layer table, then the working for parameters, inference and training."""
    src, tot, inf, size = est["source"], est["totals"], est["inference"], DTYPE_BYTES[est["dtype"]]
    batch, rows = est["batch"], est["layers"]
    what = (
        f"{src['backbone']} {'with its head' if src['head'] else 'without its head'}"
        if "backbone" in src
        else f"layers {src['layers']}"
    )
    out = [f"# Memory and compute estimate: {what}, input {src['input']}, batch {batch}", ""]
    if layer_table:
        numbers = ("activations", "params", "trainable", "macs", "flops")
        body = [
            [
                i,
                r["name"],
                r["type"],
                _shape(r["shape"]),
                *(f"{r[k]:,}" for k in numbers),
                r["working"],
            ]
            for i, r in enumerate(rows)
        ]
        total = f"{tot['activations']:,} (+{tot['input']:,} input)"
        sums = (f"{tot[k]:,}" for k in ("params", "macs", "flops"))
        body.append(["", "**total**", "", "", total, next(sums), "", *sums, ""])
        out += _table(LAYER_COLUMNS, body)
        out += ["", "Trainable counts are those of the last phase below.", ""]
    weighted = [r["params"] for r in rows if r["params"]]
    sums = " + ".join(f"{p:,}" for p in weighted) + " = " if 1 < len(weighted) <= 12 else ""
    keras = src.get("keras_count_params")
    pb = est["parameter_bytes"]
    out += [
        "## Parameters and inference",
        "",
        f"- Parameters: {sums}{tot['params']:,}"
        + (
            f" (Keras count_params(): {keras:,}, "
            f"{'matches' if keras == tot['params'] else 'DIFFERS'})"
            if keras is not None
            else ""
        )
        + f". Memory: {format_bytes(pb['float32'])} float32, {format_bytes(pb['float16'])} "
        f"float16/bfloat16, {format_bytes(pb['int8'])} int8.",
        f"- Inference on one image ({est['dtype']}): parameters {inf['parameter_bytes']:,} B + "
        f"peak of the tensors alive at once {inf['activation_bytes']:,} B "
        f"({' + '.join(_names(inf['peak_at']))}: {inf['peak_values']:,} values x {size} B) = "
        f"**{inf['bytes']:,} B = {format_bytes(inf['bytes'])}**.",
        f"- FLOPs per image: forward {format_count(tot['flops'])} "
        f"({format_count(tot['macs'])} multiply-adds); training step "
        + ", ".join(
            f"{format_count(p['train_flops'])} ({label})" for label, p in est["phases"].items()
        )
        + ".",
        "",
        f"## Training at batch {batch}",
        "",
    ]
    budget = est.get("budget")
    header = ["phase", "trainable params", f"textbook minimum ({est['dtype']})"]
    header += [f"realistic ({est['precision']})", "per extra image"]
    header += [f"largest batch in {format_bytes(budget)}" if budget else "largest batch", "fits"]
    body = [
        [label, f"{p['trainable']:,}", format_bytes(p["textbook"]["total"])]
        + [format_bytes(p["realistic"][k]) for k in ("total", "per_image")]
        + [p.get("max_batch", ""), "yes" if p.get("fits") else "**no**"]
        for label, p in est["phases"].items()
    ]
    out += _table(header, body)
    out.append("")
    for label, p in est["phases"].items():
        t, r = p["textbook"], p["realistic"]
        out += [
            f"- {label}, textbook minimum: {batch} x ({tot['activations']:,} activations + "
            f"{tot['input']:,} input values) x {size} B + parameters {t['parameters']:,} B = "
            f"**{t['total']:,} B = {format_bytes(t['total'])}**.",
            f"- {label}, realistic: weights {format_bytes(r['weights'])}"
            + (
                f" + float16 copies {format_bytes(r['weight_copies'])}"
                if r["weight_copies"]
                else ""
            )
            + f" + gradients {format_bytes(r['gradients'])} + optimizer "
            f"{format_bytes(r['optimizer'])} + {batch} x {format_bytes(r['per_image'])} "
            f"(peak {r['peak']['values']:,} values alive, {r['peak']['kept_values']:,} of them "
            f"kept for the backward pass, x {2 if r['precision'].startswith('mixed') else 4} B x "
            f"{r['overhead']:.2f}) = **{format_bytes(r['total'])}**.",
        ]
    out += ["", _why(est), ""]
    if est.get("remedies"):
        out += [
            f"## Does not fit in {format_bytes(budget)}: remedies for "
            f"{est['remedies_for']}, largest saving first",
            "",
        ]
        body = [
            [
                m["remedy"],
                *(format_bytes(m[k]) for k in ("bytes", "saves")),
                _yes(m["fits"]),
                m["note"],
            ]
            for m in est["remedies"]
        ]
        out += _table(["remedy", "new figure", "saves", "fits", "note"], body)
        out.append("")
    tp = est.get("throughput") or {}
    if tp.get("flops_per_second") and tp.get("images"):
        out += [
            f"## Time per epoch ({tp['images']:,} images at "
            f"{format_count(tp['flops_per_second'])}FLOP/s, {tp['origin']})",
            "",
        ]
        out += [f"- {label}: {p['epoch_seconds']:,.0f} s" for label, p in est["phases"].items()]
        out.append("")
    out += [f"Note: {n}" for n in est.get("notes", [])]
    return "\n".join(out).rstrip() + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _names(names: list[str], limit: int = 6) -> list[str]:
    return names if len(names) <= limit else [*names[:limit], f"{len(names) - limit} more"]
