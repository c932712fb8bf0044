"""Tensor liveness: which of a network's tensors are alive when, and what that costs.

Works on ``Layer`` rows (``pipeline.memory.spec``) in values per image: the inference peak,
the training step as a tape of allocations and frees, the training peak read off it, the
FLOPs of a training step and the peak with gradient checkpointing.
``pipeline.memory.estimate`` turns values into bytes.
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

# Adam's update of a variable (Keras: m += (g - m)(1 - b1); v += (g² - v)(1 - b2);
# w -= m·alpha / (sqrt(v) + eps)) holds two variable-sized temporaries beside the gradient
# at its worst (g - m beside g², then m·alpha beside sqrt(v)); measured in docs/memory.md,
# "What does not grow with the batch".
UPDATE_TEMPORARIES = 2


class Tape:
    """A training step's allocations and frees, in order, as the simulation makes them.

    An allocation is ``(key, values per image, weight-gradient values, scratch bytes)``; a
    free is ``(key, None)``. The peaks (``training_peak``) and the allocator's chunks
    (``pipeline.memory.allocator.simulated_peak``) are both read off the one tape, so the
    liveness rules live here only.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.alive: dict[Any, tuple[int, int, int]] = {}
        self.values = 0  # values per image alive now
        self.backward = 0  # index of the first event of the backward pass
        self.updates = 0  # index of the first event after every weight gradient is made
        self.forward_peak_rows: list[int] = []  # rows alive at the forward pass's peak

    def alloc(self, key: Any, values: int = 0, weights: int = 0, scratch: int = 0) -> None:
        if values or weights or scratch:
            self.events.append((key, values, weights, scratch))
            self.alive[key] = (values, weights, scratch)
            self.values += values

    def free(self, key: Any) -> None:
        if (size := self.alive.pop(key, None)) is not None:
            self.events.append((key, None))
            self.values -= size[0]


def _last_readers(layers: list[Layer]) -> list[int]:
    last = list(range(len(layers)))
    for i, row in enumerate(layers):
        for j in row.inputs:
            last[j] = max(last[j], i)
    last[-1] = len(layers)  # the model's output lives until the loss (or the caller) reads it
    return last


def _forward(
    layers: list[Layer], kept: set[int], kept_internal: set[int], tape: Tape | None = None
) -> tuple[int, list[int]]:
    """Run the rows in order onto ``tape``, freeing each tensor after its last reader unless
    it is kept (an elementwise row writes over its input's buffer when that input dies there;
    a row's transient tensors live while it runs; its internal tensor, a separable
    convolution's depthwise output or a pre-activation, is made from its inputs, which die
    before the output is made from it, and lives after the row when the backward pass
    reads it).

    Returns the peak in values and the rows alive at the peak.
    """
    tape = tape if tape is not None else Tape()
    last = _last_readers(layers)
    tape.alloc(0, layers[0].size)
    peak, at_peak = layers[0].size, [0]

    def note_peak() -> None:
        nonlocal peak, at_peak
        if tape.values > peak:
            peak = tape.values
            at_peak = sorted(k for k in tape.alive if isinstance(k, int) and k >= 0)

    for i, row in enumerate(layers[1:], start=1):
        (j,) = row.inputs if len(row.inputs) == 1 else (None,)
        if row.inplace and j is not None and last[j] == i and j not in kept:
            tape.free(j)  # an elementwise op writes over an input that dies here
        dying = [j for j in set(row.inputs) if last[j] == i and j not in kept]
        if row.internal:  # made from the inputs, and the output from it: inputs die between
            tape.alloc(-i if i in kept_internal else ("internal", i), row.internal)
            note_peak()
            for j in dying:
                tape.free(j)
        tape.alloc(i, row.size)
        tape.alloc(("transient", i), row.transient)
        note_peak()
        for key in [("transient", i), ("internal", i), *dying]:
            tape.free(key)
        if last[i] == i and i not in kept:  # nothing reads it
            tape.free(i)
    return peak, at_peak


def inference_peak(layers: list[Layer]) -> tuple[int, list[str]]:
    """Values alive at the worst moment of one forward pass, and the tensors alive then.

    For a plain chain this is the largest pair of consecutive activations (input included).
    """
    peak, at_peak = _forward(layers, set(), set())
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


def training_tape(
    layers: list[Layer],
    hold_gradients: bool = False,
    update_temporaries: int = UPDATE_TEMPORARIES,
    weight_copies: list[int] | None = None,
) -> Tape:
    """One training step's allocations (forward, then backward).

    Forward (``_forward``): tensors the backward pass reads stay alive. Backward, in reverse
    order: a gradient the size of each tensor a gradient flows into appears at its first
    consumer and is freed at its producer (an elementwise layer's takes over its output
    gradient's buffer); a layer's backward temporaries (``workspace``), its weight gradient
    and its convolution scratch live through its step; kept tensors are freed after their
    earliest reader. TensorFlow updates each variable as soon as its gradient is ready,
    beside the next backward step (the update is off the critical path), unless the update
    needs every gradient first (``hold_gradients``: loss scaling checks they are all
    finite), when weight gradients live to the end and the updates follow in the
    variables' (forward) order. An update holds ``update_temporaries`` values per weight
    beside the gradient (``UPDATE_TEMPORARIES``). The step ends with everything freed.

    ``weight_copies``: per row, the copy of its weights the step casts, in weight values
    (a float16 copy of n float32 weights is n / 2 of them). The casts read only the
    variables, so the executor runs them all as the step starts; a copy is freed after the
    forward pass where no gradient flows, else after its row's backward step (the input
    gradient reads it), so none is left for the updates.
    """
    needs, kept, internal = _backward_plan(layers)
    tape = Tape()
    for i, copy in enumerate(weight_copies or []):
        tape.alloc(("copy", i), weights=copy)
    tape.forward_peak_rows = _forward(layers, set(kept), internal, tape)[1]
    out = len(layers) - 1
    if out not in kept:
        tape.free(out)
    for i in range(len(layers)):
        if not needs[i]:
            tape.free(("copy", i))
    tape.backward = len(tape.events)
    updating = None  # the row whose update runs beside the next backward step
    if needs[out]:
        tape.alloc(("grad", out), layers[out].size)
    for i in reversed(range(1, len(layers))):
        if not needs[i]:
            continue
        row = layers[i]
        if row.inplace and len(row.inputs) == 1 and ("grad", i) in tape.alive:
            tape.free(("grad", i))  # the input gradient is written over this one
        for j in row.inputs:
            if needs[j] and ("grad", j) not in tape.alive:
                tape.alloc(("grad", j), layers[j].size)
        tape.alloc(("workspace", i), row.workspace + row.eigen_workspace)
        tape.alloc(("weight_grad", i), weights=row.trainable)
        flows_in = any(needs[j] for j in row.inputs)
        tape.alloc(("scratch", i), scratch=max(row.scratch, row.input_scratch if flows_in else 0))
        for key in [("workspace", i), ("scratch", i), ("grad", i), -i, ("copy", i)]:
            tape.free(key)
        if row.trainable and not hold_gradients:
            if updating is not None:  # it ran beside this step
                _end_update(tape, updating, update_temporaries)
            _start_update(tape, i, row.trainable, update_temporaries)
            updating = i
        for t in [t for t, first in kept.items() if first == i]:
            tape.free(t)
    if updating is not None:
        _end_update(tape, updating, update_temporaries)
    for key in [k for k in tape.alive if not (isinstance(k, tuple) and k[0] == "weight_grad")]:
        tape.free(key)  # what no backward step read (the update holds no activation)
    tape.updates = len(tape.events)
    if hold_gradients:  # the updates, in the variables' order, each freeing its gradient
        for i, row in enumerate(layers):
            if ("weight_grad", i) in tape.alive:
                _start_update(tape, i, row.trainable, update_temporaries)
                _end_update(tape, i, update_temporaries)
    for key in list(tape.alive):
        tape.free(key)
    return tape


def _start_update(tape: Tape, i: int, weights: int, temporaries: int) -> None:
    """The optimizer's update of row ``i``'s weights begins: its temporaries, each the size
    of the weights, beside the weight gradient."""
    for k in range(temporaries):
        tape.alloc(("update", i, k), weights=weights)


def _end_update(tape: Tape, i: int, temporaries: int) -> None:
    """The update of row ``i`` is done: its temporaries and its weight gradient are freed."""
    for k in range(temporaries):
        tape.free(("update", i, k))
    tape.free(("weight_grad", i))


def training_peak(
    layers: list[Layer], hold_gradients: bool = False, tape: Tape | None = None
) -> dict[str, Any]:
    """Per-image values alive at the worst moment of a training step (``training_tape``,
    or ``tape`` when the caller has it already).

    ``moments`` are (values per image, weight-gradient values, scratch bytes) after each
    allocation. A weight gradient is off the critical path: the executor may run it, and
    its convolution scratch, any time before the update, beside any later step's tensors,
    so a backward moment's scratch is the largest seen so far. Which moment is the peak
    depends on the batch size (``pipeline.memory.estimate.realistic_training`` takes the
    worst).
    """
    _, kept, internal = _backward_plan(layers)
    tape = training_tape(layers, hold_gradients) if tape is None else tape
    backward, updates = tape.backward, tape.updates
    sizes: dict[Any, tuple[int, int, int]] = {}
    values = weights = scratch = fwd = bwd = 0
    moments = []
    for k, (key, *size) in enumerate(tape.events):
        if size[0] is None:
            v, w, _ = sizes.pop(key)
            values, weights = values - v, weights - w
            continue
        v, w, s = sizes[key] = tuple(size)
        values, weights = values + v, weights + w
        if k < backward:
            fwd = max(fwd, values)
        else:
            scratch = max(scratch, s)
            bwd = max(bwd, values)
        # every weight gradient is made before the held gradients' updates: no scratch then
        pending = k >= backward and k < updates
        moments.append((values, weights, scratch if pending else 0))
    return {
        "values": max(fwd, bwd),
        "forward_values": fwd,
        "backward_values": bwd,
        "moments": _frontier(moments),
        "kept_values": sum(layers[t].size for t in kept)
        + sum(layers[i].internal for i in internal),
        "forward_peak_at": [layers[i].name for i in tape.forward_peak_rows],
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
