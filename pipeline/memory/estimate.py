"""The arithmetic: training and inference memory in bytes, the largest batch, the remedies.

Conventions: sizes are counted in values per image and turned into bytes last; 1 MB is
10^6 bytes and 1 MiB 2^20; FLOPs are 2 per multiply-add plus 1 per elementwise operation;
a training step costs the forward pass plus, for every layer a gradient flows through, one
forward's worth for the input gradient and, if it trains, one more for the weight gradient.

Two training figures, on purpose. The *textbook minimum* keeps every layer's output for
every image of the batch, plus the input batch and the parameters (the classic exercise's
answer). The *realistic* figure keeps only what the backward pass of the trainable layers
reads, simulated tensor by tensor (``pipeline.memory.liveness``), adds the input pipeline's
buffered batches, float32 gradients with the optimizer update's temporaries, convolution
scratch and optimizer state where the step holds them, and multiplies the per-image part
by ``CPU_OVERHEAD`` (1: nothing left unmodelled); the same step replayed through
TensorFlow's allocator (``pipeline.memory.allocator``), after the weights' creation, raises
it where chunks hold more than the tensors.
``estimate_layers`` gathers everything about one network into the dict the ``memory``
stage renders and writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipeline.memory.allocator import simulated_peak
from pipeline.memory.liveness import (
    checkpointed_peak,
    inference_peak,
    training_flops,
    training_peak,
    training_tape,
)
from pipeline.memory.spec import Layer, Variable

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
MASTER_BYTES = 4  # weights, gradients and optimizer state stay float32 under mixed precision
# What TensorFlow's allocator holds is the simulated tensors themselves: elementwise layers
# write over their input or gradient buffers, and training-mode BatchNorm's backward
# temporaries are simulated (``pipeline.memory.keras_graph``), so no multiplier is left for
# the tensors. `make bench-memory` checks this against the allocator's peak. Resident memory
# on a CPU is larger and less repeatable (glibc keeps freed blocks in per-thread arenas):
# budget resident memory with memory.overhead > 1.
CPU_OVERHEAD = 1.0
# float32 batches the input pipeline holds beside the one training: the prefetched batch,
# and part of the time the one its parallel maps are producing. Measured between steps
# (`make bench-memory`'s held bytes against the batch): 0.6 to 1.6 batches from case to case
# as tf.data's autotuning decides (more on machines with many cores).
PIPELINE_BATCHES = 1.5
INPUT_BYTES = 4  # the pipeline's images are float32 whatever the training precision
# TensorFlow's BFC allocator (the CPU's with TF_CPU_ALLOCATOR_USE_BFC, every GPU's) does not
# split a free chunk under twice the request, so a temporary of a few MiB or more can hold
# up to twice its size (the small CNN's 23.6 MiB im2col buffer held 40.5 MiB, measured).
# Charged that way, the upper bound, to the convolutions' batch-independent im2col scratch.
ALLOCATOR_CHUNK_FROM = 1 << 20
# Training steps replayed through the allocator's rules (``pipeline.memory.allocator``): the
# first step leaves free chunks that the next ones are handed whole; 0 skips the replay.
ALLOCATOR_STEPS = 3
# The CPU kernel sets whose allocations differ (``pipeline.compat.onednn_enabled`` says which
# this process runs): TensorFlow's own (Eigen) convolution backward fills an im2col buffer
# (``Layer.scratch``); oneDNN's keeps none (docs/memory.md, "Which CPU kernels").
KERNELS = ("eigen", "onednn")
REMEDY_SIDE_STEP = 32  # smaller-input remedy: image sides are tried in steps of this
DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)


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


def allocator_chunk(nbytes: int) -> int:
    """Bytes the BFC allocator may hold for one temporary of ``nbytes``: at most twice it
    (see ``ALLOCATOR_CHUNK_FROM``)."""
    if nbytes < ALLOCATOR_CHUNK_FROM:
        return nbytes
    return 2 * nbytes


def float32_batchnorm(layers: list[Layer]) -> list[Layer]:
    """Rows as they run under a float16 policy: Keras 3's BatchNormalization casts its input
    to float32, normalises in float32 and casts the result back, so an inference-mode
    BatchNorm is no longer written in place. Its forward holds the float16 input or output
    beside a float32 copy (three float16 values per element where the in-place float32
    layer holds one float32), and its backward casts the gradient the same way.
    Training-mode BatchNorm (the small CNN) is not adjusted: its float32 statistics
    temporaries are not measured yet."""
    return [
        replace(r, inplace=False, transient=r.size, workspace=r.size)
        if r.kind == "BatchNormalization" and r.inplace
        else r
        for r in layers
    ]


def kernel_rows(layers: list[Layer], kernels: str, precision: str) -> list[Layer]:
    """Rows as the CPU kernels run them: under oneDNN no convolution keeps an im2col buffer
    and no max pooling an argmax (``Layer.eigen_workspace``). Where oneDNN lacks float16
    kernels TensorFlow runs Eigen's (it logs "oneDNN supports DT_HALF only on platforms
    with AVX-512"); the estimate assumes that fallback, so under mixed precision the rows
    keep Eigen's buffers."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}. Received: {kernels!r}")
    if kernels == "eigen" or precision.startswith("mixed"):
        return layers
    return [replace(r, scratch=0, input_scratch=0, eigen_workspace=0) for r in layers]


def realistic_training(
    layers: list[Layer],
    batch: int,
    precision: str = "float32",
    optimizer_slots: int = 2,
    overhead: float = CPU_OVERHEAD,
    pipeline_batches: float = PIPELINE_BATCHES,
    allocator_steps: int = ALLOCATOR_STEPS,
    kernels: str = "eigen",
) -> dict[str, Any]:
    """fixed + batch x per_image at the step's worst moment for this batch size, or the
    allocator's simulated chunks where they hold more.

    Always held: float32 weights and optimizer slots. Per image: the input pipeline's
    buffered float32 batches and the simulated tensors (half-size under mixed precision)
    times the framework overhead. Which moment is the peak depends on the batch: the
    forward pass holds no gradient; a backward step holds its weight gradient and the
    previous layer's update (under mixed precision every gradient made so far: loss scaling
    updates only once all are checked) and the convolutions' im2col scratch; under mixed
    precision the float16 weight copies the step casts live until their last reader
    (``pipeline.memory.liveness.training_tape``, ``training_peak``).

    That is a bound on the tensors' bytes. The allocator holds chunks: a tensor can be handed
    a free chunk up to twice its size, by the order of earlier allocations. So the same
    allocations are replayed through the BFC allocator's rules (``allocator_steps`` steps,
    ``pipeline.memory.allocator.simulated_peak``), and ``total`` is the larger of the two
    (``tensors_total``, ``allocator``; ``overhead`` scales the whole replayed peak).
    ``kernels`` names the CPU kernels (``kernel_rows``).
    """
    layers = kernel_rows(layers, kernels, precision)
    params = sum(r.params for r in layers)
    trainable = sum(r.trainable for r in layers)
    mixed = precision.startswith("mixed")
    value_bytes = 2 if mixed else 4
    layers = float32_batchnorm(layers) if mixed else layers
    # Under mixed precision loss scaling checks every gradient before any update, and the
    # step casts a float16 copy of each weight (BatchNorm's stay float32).
    copies = [
        math.ceil(r.params * 2 / MASTER_BYTES) if mixed and r.kind != "BatchNormalization" else 0
        for r in layers
    ]
    tape = training_tape(layers, hold_gradients=mixed, weight_copies=copies)
    peak = training_peak(layers, mixed, tape)
    pipeline = layers[0].size * INPUT_BYTES * pipeline_batches
    held = {
        "weights": params * MASTER_BYTES,
        "optimizer": trainable * optimizer_slots * MASTER_BYTES,
    }

    def moment(m: tuple[int, int, int]) -> tuple[int, int, int, int]:
        per_image = math.ceil((m[0] * value_bytes + pipeline) * overhead)
        grads, scratch = m[1] * MASTER_BYTES, allocator_chunk(m[2])
        return batch * per_image + grads + scratch, per_image, grads, scratch

    _, per_image, gradients, scratch = max(moment(m) for m in peak["moments"])
    fixed = sum(held.values()) + gradients + scratch
    tensors = fixed + batch * per_image
    allocator = 0
    if allocator_steps:
        # The same step through the BFC allocator's rules: the weights as Keras creates
        # them, optimizer slots (zeros) a variable at a time, the input pipeline's buffered
        # batches, then the step's tensors.
        variables = [v for r in layers for v in r.variables or [Variable(r.params, False)]]
        kept = [
            v.values * MASTER_BYTES
            for r in layers
            if r.trainable
            for v in r.variables or [Variable(r.trainable, False)]
            if v.trainable
            for _ in range(optimizer_slots)
        ]
        kept += [batch * layers[0].size * INPUT_BYTES] * math.ceil(pipeline_batches)
        created = [(v.values * MASTER_BYTES, v.drawn) for v in variables]
        step = simulated_peak(
            tape.events, batch, value_bytes, MASTER_BYTES, kept, allocator_steps, created
        )
        allocator = math.ceil(step * overhead)
    return {
        **held,
        # at the worst moment: weight gradients, the update's temporaries, float16 copies
        "gradients": gradients,
        "weight_copies": sum(copies) * MASTER_BYTES,  # float16 copies the step casts
        "scratch": scratch,
        "fixed": fixed,
        "per_image": per_image,
        "input_pipeline": pipeline,
        "activations": batch * per_image,
        "tensors_total": tensors,
        "allocator": allocator,
        "total": max(tensors, allocator),
        "batch": batch,
        "precision": precision,
        "overhead": overhead,
        "kernels": kernels,
        "peak": peak,
    }


# The same training step peaks differently from one process to the next (the executor's
# order of the backward pass, the allocator's chunks), so a budget's last 5% is kept free:
# the largest batch, "fits" and the remedies plan into ``usable(budget)``. Not enough
# everywhere: docs/memory.md, "The budget's last 5%".
BUDGET_HEADROOM = 0.05


def usable(budget: float) -> float:
    """The part of a memory budget a run is planned into."""
    return budget * (1 - BUDGET_HEADROOM)


def max_batch(cost: Callable[[int], float], budget: float, limit: int = 1 << 20) -> int:
    """Largest batch size whose cost fits the budget (0 when not even one image fits).

    Doubling then bisection, so ``cost`` is called O(log batch) times. The answer is always
    a batch whose cost was computed and fits. For a monotone cost it is the largest; the
    allocator's chunks make the real cost jump up and down a little with the batch (a
    tensor handed a chunk twice its size at one batch, not at the next), and then a larger
    batch than the answer may fit too.
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
    kernels: str = "eigen",
) -> list[dict[str, Any]]:
    """What to change when the run does not fit, largest saving first, each with its figure;
    "fits" is within ``usable(budget)``."""
    budget = usable(budget)

    def run(rows: list[Layer] = layers, b: int = batch, p: str = precision) -> dict[str, Any]:
        return realistic_training(rows, b, p, optimizer_slots, overhead, kernels=kernels)

    now = run()
    options: list[tuple[str, float, str]] = []
    fits = max_batch(lambda b: run(b=b)["total"], budget, limit=batch)
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
    kernels: str = "eigen",
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
        "kernels": kernels,
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

    def cost(rows: list[Layer], b: int) -> dict[str, Any]:
        return realistic_training(rows, b, precision, optimizer_slots, overhead, kernels=kernels)

    for label, rows in phases.items():
        realistic = cost(rows, batch)
        phase = {
            "trainable": sum(r.trainable for r in rows),
            "textbook": textbook_training(rows, batch, dtype),
            "realistic": realistic,
            "train_flops": training_flops(rows),
        }
        if budget:
            phase["max_batch"] = max_batch(lambda b, r=rows: cost(r, b)["total"], usable(budget))
            phase["fits"] = realistic["total"] <= usable(budget)
        result["phases"][label] = phase
    return result
