"""Tensor liveness: which of a network's tensors are alive when, and what that costs.

Works on ``Layer`` rows (``pipeline.memory.spec``) in values per image: the inference peak,
the training peak (forward, then backward), the FLOPs of a training step and the peak with
gradient checkpointing. ``pipeline.memory.estimate`` turns values into bytes.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.memory.spec import (
    SAVES_INPUTS,
    SAVES_INPUTS_IF_TRAINABLE,
    SAVES_OUTPUT,
    Layer,
)


def _last_readers(layers: list[Layer]) -> list[int]:
    last = list(range(len(layers)))
    for i, row in enumerate(layers):
        for j in row.inputs:
            last[j] = max(last[j], i)
    last[-1] = len(layers)  # the model's output lives until the loss (or the caller) reads it
    return last


def _forward(
    layers: list[Layer], kept: set[int], kept_internal: set[int]
) -> tuple[int, list[int], dict[int, int]]:
    """Run the rows in order, freeing each tensor after its last reader unless it is kept
    (an elementwise row writes over its input's buffer when that input dies there).

    Returns the peak in values, the rows alive at the peak, and what is alive at the end.
    """
    last = _last_readers(layers)
    alive = {0: layers[0].size}
    peak, at_peak = layers[0].size, [0]
    for i, row in enumerate(layers[1:], start=1):
        alive[i] = row.size
        now = sum(alive.values()) + row.internal + row.transient
        (j,) = row.inputs if len(row.inputs) == 1 else (None,)
        if row.inplace and j is not None and last[j] == i and j not in kept and j in alive:
            now -= alive[j]  # an elementwise op writes over an input that dies here
        if now > peak:
            peak, at_peak = now, sorted(k for k in alive if k >= 0)
        for j in {*row.inputs, i}:  # i itself when nothing reads it
            if last[j] == i and j not in kept:
                del alive[j]
        if i in kept_internal:
            alive[-i] = row.internal  # negative key: a layer's internal tensor
    return peak, at_peak, alive


def inference_peak(layers: list[Layer]) -> tuple[int, list[str]]:
    """Values alive at the worst moment of one forward pass, and the tensors alive then.

    For a plain chain this is the largest pair of consecutive activations (input included).
    """
    peak, at_peak, _ = _forward(layers, set(), set())
    return peak, [layers[i].name for i in at_peak]


def _backward_plan(layers: list[Layer]) -> tuple[list[bool], dict[int, int], set[int]]:
    """Which rows a gradient flows through, the tensors the backward pass reads (each with
    its earliest reader: it is freed once the backward pass gets there), and the rows whose
    internal tensor is kept."""
    needs: list[bool] = []
    for row in layers:
        needs.append(row.trainable > 0 or any(needs[j] for j in row.inputs))
    kept: dict[int, int] = {}
    internal: set[int] = set()
    for i, row in enumerate(layers):
        if not needs[i]:
            continue
        read = (
            list(row.inputs)
            if SAVES_INPUTS in row.saves
            or (SAVES_INPUTS_IF_TRAINABLE in row.saves and row.trainable)
            else []
        )
        read += [i] if SAVES_OUTPUT in row.saves else []
        for t in read:
            kept[t] = min(kept.get(t, i), i)
        if row.internal:
            internal.add(i)
    return needs, kept, internal


def training_peak(layers: list[Layer], hold_gradients: bool = False) -> dict[str, Any]:
    """Per-image values alive at the worst moment of a training step (forward, then backward).

    Forward: tensors the backward pass reads stay alive. Backward, in reverse order: a
    gradient the size of each tensor a gradient flows into appears at its first consumer and
    is freed at its producer (an elementwise layer's reuses its output gradient's buffer);
    a layer's backward temporaries (``workspace``) live while it runs; kept tensors are
    freed after their earliest reader.

    ``moments`` are (values per image, weight-gradient values, scratch bytes) at the forward
    peak and at each backward step. TensorFlow updates each variable as soon as its gradient
    is ready, so a gradient lives only through its own step, unless the update needs every
    gradient first (``hold_gradients``: loss scaling checks they are all finite, then the
    update holds them all and no activation). A convolution's im2col scratch
    (``Layer.scratch``) from its backward step on, so which moment is the peak depends on
    the batch size (``pipeline.memory.estimate.realistic_training`` takes the worst).
    """
    needs, kept, internal = _backward_plan(layers)
    fwd, fwd_rows, alive = _forward(layers, set(kept), internal)
    out = len(layers) - 1
    if out not in kept:
        del alive[out]
    grads = {out: layers[out].size} if needs[out] else {}
    bwd = 0
    moments = [(fwd, 0, 0)]  # the forward pass: no gradient exists yet
    weight_grads = scratch = 0
    for i in reversed(range(1, len(layers))):
        if not needs[i]:
            continue
        row = layers[i]
        reused = row.inplace and len(row.inputs) == 1 and i in grads
        for j in row.inputs:
            if needs[j] and j not in grads:
                grads[j] = layers[j].size
        # An in-place gradient takes over its output gradient's buffer: never both at once.
        held = sum(grads.values()) - (grads[i] if reused else 0)
        now = sum(alive.values()) + held + row.workspace
        bwd = max(bwd, now)
        # A weight gradient is freed once its variable is updated, right after its step,
        # unless the update waits for every gradient (``hold_gradients``).
        weight_grads = weight_grads + row.trainable if hold_gradients else row.trainable
        flows_in = any(needs[j] for j in row.inputs)
        # A weight gradient is off the critical path: the executor may run it (and its
        # scratch) any time before the update, beside any later step's tensors.
        scratch = max(scratch, row.scratch, row.input_scratch if flows_in else 0)
        moments.append((now, weight_grads, scratch))
        grads.pop(i, None)
        alive.pop(-i, None)
        for t in [t for t, first in kept.items() if first == i]:
            alive.pop(t, None)
    if hold_gradients:  # the update: every gradient, no activation
        moments.append((0, weight_grads, 0))
    return {
        "values": max(fwd, bwd),
        "forward_values": fwd,
        "backward_values": bwd,
        "moments": _frontier(moments),
        "kept_values": sum(layers[t].size for t in kept)
        + sum(layers[i].internal for i in internal),
        "forward_peak_at": [layers[i].name for i in fwd_rows],
    }


def _frontier(moments: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The moments that can be the peak at some batch size: no other has at least as many
    values per image and at least as much batch-independent memory."""
    keep: list[tuple[int, int, int]] = []
    for m in sorted(set(moments), key=lambda m: (-(m[1] * 4 + m[2]), -m[0])):
        if not keep or m[0] > max(k[0] for k in keep):
            keep.append(m)
    return keep


def training_flops(layers: list[Layer]) -> int:
    """FLOPs of one training step per image: forward + input gradients + weight gradients."""
    needs, _, _ = _backward_plan(layers)
    total = sum(r.flops for r in layers)
    for i, row in enumerate(layers):
        if needs[i]:
            total += row.flops if any(needs[j] for j in row.inputs) else 0
            total += 2 * row.macs if row.trainable else 0
    return total


def checkpointed_peak(layers: list[Layer]) -> int:
    """Per-image peak with gradient checkpointing: the backward region is cut into ~sqrt(n)
    segments, only their boundary outputs stay alive through the forward pass, and each
    segment is recomputed (one more forward of the region) just before its backward pass."""
    needs, kept, _ = _backward_plan(layers)
    region = [i for i in range(1, len(layers)) if needs[i]]
    if len(region) < 4:
        return training_peak(layers)["values"]
    step = max(2, round(math.sqrt(len(region))))
    segments = [region[k : k + step] for k in range(0, len(region), step)]
    marks = [seg[-1] for seg in segments[:-1]]
    worst = _forward(layers, set(marks), set())[0]
    for n, seg in enumerate(segments):
        held = sum(layers[m].size for m in marks[:n])
        inside = set(seg)
        again = sum(layers[t].size for t, first in kept.items() if first in inside)
        again += sum(layers[i].internal for i in seg)
        worst = max(worst, held + again + 2 * max(layers[i].size for i in seg))
    return worst
