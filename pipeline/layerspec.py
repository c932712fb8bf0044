"""The layer list the memory estimator works on: how to build it, and when its tensors live.

A network is a list of ``Layer`` rows in execution order: row 0 is the input image and every
other row names the rows it reads. Rows come from a short text spec (``parse_layers``) or a
Keras model (``layers_from_model``); ``inference_peak``, ``training_peak`` and
``training_flops`` work on rows only, in values per image, so a textbook stack typed on the
command line and a Keras backbone are costed by the same code. ``pipeline.memory`` turns
values into bytes. Keras is never imported here.

Layer-spec grammar: comma-separated tokens, case-insensitive, K = kernel side, S = stride.

    conv{K}x{K}[s{S}][same|valid]:{F}   convolution with F filters and a bias (S=1, SAME)
    maxpool{K}x{K}[s{S}][same|valid]    max pooling (S=K, VALID: Keras's defaults)
    avgpool{K}x{K}[s{S}][same|valid]    average pooling (same defaults)
    lrn                                 local response normalisation (AlexNet), size 5
    relu                                ReLU
    flatten                             to a vector
    dense:{N}                           fully connected layer with N units and a bias

>>> rows = parse_layers("200x300x3", "conv3x3s2same:100,conv3x3s2same:200,conv3x3s2same:400")
>>> [r.shape for r in rows], sum(r.params for r in rows)
([(200, 300, 3), (100, 150, 100), (50, 75, 200), (25, 38, 400)], 903400)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# What a layer's backward pass reads, besides the gradient of its output.
SAVES_INPUTS = "inputs"  # always (max pooling, LRN, swish, BatchNorm in training mode)
SAVES_INPUTS_IF_TRAINABLE = "inputs-if-trainable"  # for the weight gradient (conv, dense)
SAVES_OUTPUT = "output"  # ReLU, sigmoid, softmax, a dropout mask, max pooling

LRN_SIZE = 5  # AlexNet's local response normalisation window (depth radius 2)
LRN_FLOPS_PER_VALUE = 2 * LRN_SIZE + 3  # square and sum the window, then k + a*sum, ^b, divide

SPEC_FORMS = (
    "conv{K}x{K}[s{S}][same|valid]:{F}",
    "maxpool{K}x{K}[s{S}][same|valid]",
    "avgpool{K}x{K}[s{S}][same|valid]",
    "lrn",
    "relu",
    "flatten",
    "dense:{N}",
)
_WINDOW = r"(\d+)x(\d+)(?:s(\d+))?(same|valid)?"
_CONV = re.compile(rf"conv{_WINDOW}:(\d+)")
_POOL = re.compile(rf"(max|avg)pool{_WINDOW}")
_DENSE = re.compile(r"(?:dense|fc):(\d+)")


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # input, conv, dense, maxpool, ... or the Keras class name
    shape: tuple[int, ...]  # output shape for one image (no batch axis)
    inputs: tuple[int, ...] = ()  # rows this layer reads
    params: int = 0  # every parameter, trainable or not
    trainable: int = 0  # the trainable part of params
    macs: int = 0  # multiply-adds per image
    flops: int = 0  # per image, forward: 2 per multiply-add + 1 per elementwise op
    saves: tuple[str, ...] = ()  # SAVES_* flags: what its backward pass reads
    internal: int = 0  # values made inside the layer that its backward reads (pre-activation)
    working: str = ""  # the arithmetic behind shape and params, printed for students

    @property
    def size(self) -> int:
        """Activation values for one image."""
        return math.prod(self.shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """'200x300x3' -> (200, 300, 3); '200x300' means RGB."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) == 2:
        shape = (*shape, 3)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"--input must be HEIGHTxWIDTHxCHANNELS, e.g. 200x300x3. Received: {text!r}"
        )
    return shape


def parse_layers(input_shape: str | tuple[int, ...], spec: str) -> list[Layer]:
    """The rows of a plain stack (each layer reads the previous one), with their working."""
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    rows = [Layer("input", "input", shape, working="x".join(map(str, shape)))]
    counts: dict[str, int] = {}
    for token in (t.strip().lower() for t in spec.split(",")):
        if not token:
            continue
        kind, row = _parse_token(token, rows[-1].shape)
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{kind}{counts[kind]}"
        rows.append(Layer(name=name, inputs=(len(rows) - 1,), **row))
    if len(rows) == 1:
        raise ValueError(f"--layers is empty; give comma-separated {', '.join(SPEC_FORMS)}")
    return rows


def _parse_token(token: str, shape: tuple[int, ...]) -> tuple[str, dict]:
    if m := _CONV.fullmatch(token):
        kh, kw, stride, padding, filters = m.groups()
        return "conv", _conv(
            token, shape, int(kh), int(kw), int(stride or 1), padding or "same", int(filters)
        )
    if m := _POOL.fullmatch(token):
        op, kh, kw, stride, padding = m.groups()
        return "pool", _pool(
            token, shape, op, int(kh), int(kw), int(stride or kh), padding or "valid"
        )
    if m := _DENSE.fullmatch(token):
        return "fc", _dense(token, shape, int(m.group(1)))
    n = math.prod(shape)
    if token == "lrn":
        return "lrn", {
            "kind": "lrn",
            "shape": shape,
            "flops": LRN_FLOPS_PER_VALUE * n,
            "saves": (SAVES_INPUTS, SAVES_OUTPUT),
            "working": "shape unchanged",
        }
    if token == "relu":
        return "relu", {
            "kind": "relu",
            "shape": shape,
            "flops": n,
            "saves": (SAVES_OUTPUT,),
            "working": "shape unchanged",
        }
    if token == "flatten":
        return "flatten", {
            "kind": "flatten",
            "shape": (n,),
            "working": f"{'x'.join(map(str, shape))} = {n:,}",
        }
    raise ValueError(
        f"Unknown layer {token!r} in --layers. Valid forms: {', '.join(SPEC_FORMS)}, "
        "e.g. conv3x3s2same:100,maxpool3x3s2,lrn,flatten,dense:4096"
    )


def _spatial(
    token: str, shape: tuple[int, ...], k: tuple[int, int], stride: int, padding: str
) -> tuple[int, int, str]:
    if len(shape) != 3:
        raise ValueError(
            f"{token} needs an HxWxC input, but the layer before it outputs "
            f"{'x'.join(map(str, shape))}; put it before flatten"
        )
    out, steps = [], []
    for side, kernel in zip(shape[:2], k):
        if padding == "same":
            o = -(-side // stride)
            steps.append(f"ceil({side}/{stride})={o}")
        else:
            o = (side - kernel) // stride + 1
            steps.append(f"({side}-{kernel})//{stride}+1={o}")
        if o < 1:
            raise ValueError(
                f"{token}: a {kernel}-wide VALID window does not fit an input of "
                f"side {side}; use same padding or a smaller kernel"
            )
        out.append(o)
    return out[0], out[1], ", ".join(steps)


def _conv(
    token: str, shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: str, filters: int
) -> dict:
    oh, ow, steps = _spatial(token, shape, (kh, kw), stride, padding)
    cin = shape[2]
    params = (kh * kw * cin + 1) * filters
    macs = oh * ow * filters * kh * kw * cin
    return {
        "kind": "conv",
        "shape": (oh, ow, filters),
        "params": params,
        "trainable": params,
        "macs": macs,
        "flops": 2 * macs + oh * ow * filters,
        "saves": (SAVES_INPUTS_IF_TRAINABLE,),
        "working": f"{steps}; params ({kh}x{kw}x{cin}+1)x{filters} = {params:,}",
    }


def _pool(
    token: str, shape: tuple[int, ...], op: str, kh: int, kw: int, stride: int, padding: str
) -> dict:
    oh, ow, steps = _spatial(token, shape, (kh, kw), stride, padding)
    out = (oh, ow, shape[2])
    saves = (SAVES_INPUTS, SAVES_OUTPUT) if op == "max" else ()
    return {
        "kind": f"{op}pool",
        "shape": out,
        "flops": kh * kw * math.prod(out),
        "saves": saves,
        "working": f"{steps}; no parameters",
    }


def _dense(token: str, shape: tuple[int, ...], units: int) -> dict:
    if len(shape) != 1:
        raise ValueError(
            f"{token} needs a vector, but the layer before it outputs "
            f"{'x'.join(map(str, shape))}; put flatten before it"
        )
    n = shape[0]
    params = (n + 1) * units
    return {
        "kind": "dense",
        "shape": (units,),
        "params": params,
        "trainable": params,
        "macs": n * units,
        "flops": 2 * n * units + units,
        "saves": (SAVES_INPUTS_IF_TRAINABLE,),
        "working": f"params ({n:,}+1)x{units:,} = {params:,}",
    }


# ----------------------------------------------------------------------------- tensor liveness


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
    """Run the rows in order, freeing each tensor after its last reader unless it is kept.

    Returns the peak in values, the rows alive at the peak, and what is alive at the end.
    """
    last = _last_readers(layers)
    alive = {0: layers[0].size}
    peak, at_peak = layers[0].size, [0]
    for i, row in enumerate(layers[1:], start=1):
        alive[i] = row.size
        now = sum(alive.values()) + row.internal
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


def training_peak(layers: list[Layer]) -> dict[str, Any]:
    """Per-image values alive at the worst moment of a training step (forward, then backward).

    Forward: tensors the backward pass reads stay alive. Backward, in reverse order: a
    gradient the size of each tensor a gradient flows into appears at its first consumer and
    is freed at its producer; kept tensors are freed after their earliest reader.
    """
    needs, kept, internal = _backward_plan(layers)
    fwd, fwd_rows, alive = _forward(layers, set(kept), internal)
    out = len(layers) - 1
    if out not in kept:
        del alive[out]
    grads = {out: layers[out].size} if needs[out] else {}
    bwd = 0
    for i in reversed(range(1, len(layers))):
        if not needs[i]:
            continue
        for j in layers[i].inputs:
            if needs[j] and j not in grads:
                grads[j] = layers[j].size
        bwd = max(bwd, sum(alive.values()) + sum(grads.values()))
        grads.pop(i, None)
        alive.pop(-i, None)
        for t in [t for t, first in kept.items() if first == i]:
            alive.pop(t, None)
    return {
        "values": max(fwd, bwd),
        "forward_values": fwd,
        "backward_values": bwd,
        "kept_values": sum(layers[t].size for t in kept)
        + sum(layers[i].internal for i in internal),
        "forward_peak_at": [layers[i].name for i in fwd_rows],
    }


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


# ----------------------------------------------------------------------------- Keras models

_NO_SAVES = {
    "InputLayer",
    "Add",
    "Subtract",
    "Average",
    "Concatenate",
    "Flatten",
    "Reshape",
    "Permute",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "Rescaling",
    "Normalization",
    "Identity",
}
# Activations whose gradient is computed from their output; every other one reads its input.
_OUTPUT_GRAD_ACTIVATIONS = {"relu", "sigmoid", "tanh", "softmax", "elu", "exponential"}


def layers_from_model(model: Any) -> list[Layer]:
    """One row per layer call of a functional or Sequential model, nested models expanded.

    Rows follow Keras's own execution order (deepest first). Trainable counts follow the
    model's current ``trainable`` flags, so call it after ``freeze_for_phase``; BatchNorm
    counts as training-mode only when it trains and no enclosing call passed training=False.
    """
    graph = _graph_of(model)
    if len(graph.inputs) != 1:
        raise ValueError(
            f"Model {model.name} has {len(graph.inputs)} inputs; the memory "
            "estimate handles single-input image models"
        )
    shape = _static_shape(graph.inputs[0], model.name)
    rows = [Layer("input", "input", shape, working="x".join(map(str, shape)))]
    ids = {id(graph.inputs[0]): 0}
    _walk(graph, rows, ids, set(), frozen=not model.trainable, inference=False)
    return rows


def _graph_of(model: Any) -> Any:
    from pipeline.compat import functional_graph

    graph = functional_graph(model)
    if graph is None:
        raise ValueError(
            f"Model {model.name} is subclassed and has no layer graph; build it "
            "with the functional API or keras.Sequential to estimate its memory"
        )
    return graph


def _static_shape(tensor: Any, where: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"{where} has an output of shape {tensor.shape}; memory estimates "
            "need a fixed input size (pass input_shape=(H, W, 3) when building)"
        )
    return shape


def _walk(
    graph: Any,
    rows: list[Layer],
    ids: dict[int, int],
    seen: set[int],
    frozen: bool,
    inference: bool,
) -> None:
    from pipeline.compat import functional_graph, nodes_by_depth

    by_depth = nodes_by_depth(graph)
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input:
                continue
            op = node.operation
            sources = tuple(ids[id(t)] for t in node.input_tensors)
            op_frozen = frozen or not getattr(op, "trainable", True)
            op_inference = inference or node.arguments.kwargs.get("training") is False
            if functional_graph(op) is not None:  # a nested model: walk its own graph
                inner = _graph_of(op)
                for tensor, source in zip(inner.inputs, sources):
                    ids[id(tensor)] = source
                _walk(inner, rows, ids, seen, op_frozen, op_inference)
                for outer, tensor in zip(node.outputs, inner.outputs):
                    ids[id(outer)] = ids[id(tensor)]
                continue
            rows.append(_keras_row(op, node, sources, id(op) not in seen, op_frozen, op_inference))
            seen.add(id(op))
            for tensor in node.outputs:
                ids[id(tensor)] = len(rows) - 1


def _keras_row(
    op: Any, node: Any, sources: tuple[int, ...], first: bool, frozen: bool, inference: bool
) -> Layer:
    def count(weights: Any) -> int:
        return int(sum(math.prod(w.shape) for w in weights)) if first else 0

    shape = _static_shape(node.outputs[0], op.name)
    in_shapes = [tuple(t.shape[1:]) for t in node.input_tensors]
    params = count(getattr(op, "weights", []))
    trainable = 0 if frozen else count(getattr(op, "trainable_weights", []))
    macs, flops, saves, internal = _keras_costs(op, in_shapes, shape, trainable, inference)
    return Layer(
        op.name, type(op).__name__, shape, sources, params, trainable, macs, flops, saves, internal
    )


def _activation_saves(name: str, size: int) -> tuple[tuple[str, ...], int]:
    """Fused activation of a conv/dense layer: its output, or a kept pre-activation copy."""
    if name == "linear":
        return (), 0
    return ((SAVES_OUTPUT,), 0) if name in _OUTPUT_GRAD_ACTIVATIONS else ((), size)


def _keras_costs(
    op: Any,
    in_shapes: list[tuple[int, ...]],
    shape: tuple[int, ...],
    trainable: int,
    inference: bool,
) -> tuple[int, int, tuple[str, ...], int]:
    """(multiply-adds, FLOPs, saves, internal values) of one layer call, per image."""
    classes = {c.__name__ for c in type(op).__mro__}
    name = type(op).__name__
    out = math.prod(shape)
    cin = in_shapes[0][-1] if in_shapes and in_shapes[0] else 1
    act = getattr(getattr(op, "activation", None), "__name__", "linear")
    if classes & {"BaseConv", "Dense", "EinsumDense", "BaseSeparableConv", "BaseDepthwiseConv"}:
        internal = 0
        if "BaseSeparableConv" in classes:  # depthwise then pointwise; the pointwise reads it
            mid = out // shape[-1] * cin * op.depth_multiplier
            macs = mid * math.prod(op.kernel_size) + mid * shape[-1]
            internal = mid
        elif "BaseDepthwiseConv" in classes:
            macs = out * math.prod(op.kernel_size)
        elif "BaseConv" in classes:
            macs = out * math.prod(op.kernel_size) * cin // getattr(op, "groups", 1)
        else:
            macs = math.prod(in_shapes[0]) * shape[-1]
        extra = out * (bool(getattr(op, "use_bias", False)) + (act != "linear"))
        saves, pre = _activation_saves(act, out)
        return macs, 2 * macs + extra, (SAVES_INPUTS_IF_TRAINABLE, *saves), internal + pre
    if "BatchNormalization" in classes:
        training = trainable > 0 and not inference
        return 0, 2 * out, (SAVES_INPUTS,) if training else (), 0
    if name == "ReLU":
        plain = op.max_value is None and not op.negative_slope and not op.threshold
        return 0, out, (SAVES_OUTPUT,) if plain else (SAVES_INPUTS,), 0
    if name in ("Activation", "LeakyReLU", "ELU", "PReLU", "Softmax"):
        fn = act if name == "Activation" else name.lower()
        return 0, out, (SAVES_OUTPUT,) if fn in _OUTPUT_GRAD_ACTIVATIONS else (SAVES_INPUTS,), 0
    if name.startswith("MaxPooling"):
        return 0, out * math.prod(op.pool_size), (SAVES_INPUTS, SAVES_OUTPUT), 0
    if name.startswith("AveragePooling"):
        return 0, out * math.prod(op.pool_size), (), 0
    if name.startswith("Global"):
        return 0, math.prod(in_shapes[0]), (), 0
    if name in ("Add", "Subtract", "Average", "Maximum", "Minimum"):
        return 0, out * (len(in_shapes) - 1), (), 0
    if name == "Multiply":
        return 0, out * (len(in_shapes) - 1), (SAVES_INPUTS,), 0
    if name in ("Rescaling", "Normalization"):
        return 0, 2 * out, (), 0
    if name == "Dropout":
        mask = not inference and op.noise_shape is None  # the kept mask is the output's size
        return 0, out if mask else 0, (SAVES_OUTPUT,) if mask else (), 0
    if name in _NO_SAVES:
        return 0, 0, (), 0
    return 0, out, (SAVES_INPUTS,), 0  # unknown layer: assume its backward reads its input
