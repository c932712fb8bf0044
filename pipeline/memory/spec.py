"""The layer-spec grammar: a network typed on the command line, as ``Layer`` rows.

A network is a list of ``Layer`` rows in execution order: row 0 is the input image and every
other row names the rows it reads. Rows come from a short text spec (``parse_layers``, here)
or a Keras model (``pipeline.memory.keras_graph``); ``pipeline.memory.liveness`` works on
rows only, in values per image, so a textbook stack typed on the command line and a Keras
backbone are costed by the same code. Keras is never imported here.

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
from typing import NamedTuple

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


class Variable(NamedTuple):
    """One weight variable of a layer, as the allocator meets it when Keras creates it."""

    values: int
    drawn: bool  # by a random initializer (three buffers at creation), else filled
    trainable: bool = True  # optimizer slots follow it (not BatchNorm's moving statistics)


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
    # Elementwise backward (ReLU, inference BatchNorm, dropout): TensorFlow's kernel writes
    # the input gradient into the output gradient's buffer, so it costs no new tensor.
    inplace: bool = False
    workspace: int = 0  # temporaries its backward allocates beside its gradients
    # Those only TensorFlow's own (Eigen) CPU kernels allocate: max pooling's backward
    # copies the output and records an int64 argmax (``MAXPOOL_EIGEN_WORKSPACE``); oneDNN's
    # allocates neither (``pipeline.memory.estimate.kernel_rows``).
    eigen_workspace: int = 0
    transient: int = 0  # temporaries its forward allocates beside its input and output
    # Bytes, whatever the batch: the im2col buffer TensorFlow's CPU convolution backward
    # allocates for the weight gradient (``scratch``) and for the input gradient
    # (``input_scratch``), sized to its 30 MiB working-set target (``conv_backprop_scratch``).
    scratch: int = 0
    input_scratch: int = 0
    working: str = ""  # the arithmetic behind shape and params, printed for students
    variables: tuple[Variable, ...] = ()  # params variable by variable, in creation order

    @property
    def size(self) -> int:
        """Activation values for one image."""
        return math.prod(self.shape)


# Output-sized float32 values of Eigen's max-pooling backward workspace: the output's copy
# (1) and its int64 argmax (2), measured (4 + 8 MiB for a 4 MiB output).
MAXPOOL_EIGEN_WORKSPACE = 3
# TensorFlow's CPU convolution backward kernels (Conv2DCustomBackpropFilter/Input) size their
# im2col buffer to fill a working set of this many bytes (the L3 cache they assume), however
# small the batch.
CONV_WORKING_SET = 30 << 20
_L2_WORKING_SET = 256 << 10  # per-thread work below which the input gradient batches images
CPU_THREADS = 2  # the kernels' intra-op threads: the input gradient batches images on few


def conv_backprop_scratch(
    out_hw: int, window: int, cin: int, cout: int, threads: int = CPU_THREADS
) -> tuple[int, int]:
    """(weight-gradient, input-gradient) im2col buffers in float32 bytes of a 2-D convolution
    with ``out_hw`` output positions and a ``window``-position kernel.

    The kernels take as many images per shard as fill ``CONV_WORKING_SET`` (not capped by
    the batch), so the buffer is a fixed cost of tens of MiB for the early, large-image
    layers; the input gradient takes one image at a time unless its work per thread is
    under ``_L2_WORKING_SET``. Under float16 the element count doubles: same bytes.
    """
    target, patch = CONV_WORKING_SET // 4, window * cin
    images, out_grad, kernel = out_hw * patch, out_hw * cout, patch * cout
    weight = -(-target // (images + out_grad + kernel)) * images * 4
    unit = out_grad + kernel + images
    per_image = unit // threads >= _L2_WORKING_SET // 4
    inputs = (1 if per_image else -(-target // unit)) * images * 4
    return weight, inputs


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


def _at_least_one(token: str, **values: str | None) -> None:
    """A zero kernel, stride, filter count or unit count has no meaning (a zero stride
    divides by zero): refused, naming the number."""
    zero = [n.replace("_", " ") for n, v in values.items() if v is not None and int(v) < 1]
    if zero:
        raise ValueError(
            f"--layers: {token!r} has a {' and a '.join(zero)} of 0; kernel sides, strides, "
            "filters and units must be at least 1, e.g. conv3x3s2:64,maxpool2x2,dense:10"
        )


def _parse_token(token: str, shape: tuple[int, ...]) -> tuple[str, dict]:
    if m := _CONV.fullmatch(token):
        kh, kw, stride, padding, filters = m.groups()
        _at_least_one(token, kernel_height=kh, kernel_width=kw, stride=stride, filter_count=filters)
        return "conv", _conv(
            token, shape, int(kh), int(kw), int(stride or 1), padding or "same", int(filters)
        )
    if m := _POOL.fullmatch(token):
        op, kh, kw, stride, padding = m.groups()
        _at_least_one(token, kernel_height=kh, kernel_width=kw, stride=stride)
        return "pool", _pool(
            token, shape, op, int(kh), int(kw), int(stride or kh), padding or "valid"
        )
    if m := _DENSE.fullmatch(token):
        _at_least_one(token, unit_count=m.group(1))
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
            "inplace": True,
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
    scratch, input_scratch = conv_backprop_scratch(oh * ow, kh * kw, cin, filters)
    return {
        "kind": "conv",
        "scratch": scratch,
        "input_scratch": input_scratch,
        "shape": (oh, ow, filters),
        "params": params,
        "trainable": params,
        "macs": macs,
        "flops": 2 * macs + oh * ow * filters,
        "saves": (SAVES_INPUTS_IF_TRAINABLE,),
        "working": f"{steps}; params ({kh}x{kw}x{cin}+1)x{filters} = {params:,}",
        "variables": (Variable(kh * kw * cin * filters, True), Variable(filters, False)),
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
        "eigen_workspace": MAXPOOL_EIGEN_WORKSPACE * math.prod(out) if op == "max" else 0,
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
        "variables": (Variable(n * units, True), Variable(units, False)),
    }
