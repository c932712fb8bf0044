"""Walking a functional or Sequential Keras model into ``Layer`` rows.

One row per layer call, nested models expanded, with its parameters, trainable part, costs
and what its backward pass reads (``SAVES_*``). Private Keras access goes through
``pipeline.compat``, imported inside the functions that need it, so importing this module
does not import Keras.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.memory.spec import (
    MAXPOOL_EIGEN_WORKSPACE,
    SAVES_INPUTS,
    SAVES_INPUTS_IF_TRAINABLE,
    SAVES_OUTPUT,
    Layer,
    Variable,
    conv_backprop_scratch,
)

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
# Activations whose TensorFlow gradient reads the output, not the input (nn_grad.py: Relu6's
# too, so a ReLU capped at 6 keeps only its output); every other one reads its input.
_OUTPUT_GRAD_ACTIVATIONS = {"relu", "relu6", "sigmoid", "tanh", "softmax", "elu", "exponential"}


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
    variables = _variables(op) if first else ()
    macs, flops, saves, internal = _keras_costs(op, in_shapes, shape, trainable, inference)
    inplace, workspace = _backward_buffers(op, math.prod(shape), trainable, inference)
    scratch, input_scratch = _conv_scratch(op, shape)
    return Layer(
        op.name,
        type(op).__name__,
        shape,
        sources,
        params,
        trainable,
        macs,
        flops,
        saves,
        internal,
        inplace=inplace,
        workspace=workspace,
        eigen_workspace=MAXPOOL_EIGEN_WORKSPACE * math.prod(shape)
        if type(op).__name__.startswith("MaxPooling")
        else 0,
        scratch=scratch if trainable else 0,
        input_scratch=input_scratch,
        variables=variables,
    )


# A variable's initializer, by the variable's name, where it is not ``{name}_initializer``
# (a DepthwiseConv2D's kernel comes from its depthwise_initializer).
_INITIALIZERS = {
    "kernel": ("kernel_initializer", "depthwise_initializer"),
    "depthwise_kernel": ("depthwise_initializer",),
    "pointwise_kernel": ("pointwise_initializer",),
}


def _variables(op: Any) -> tuple[Variable, ...]:
    """The layer's weight variables in creation order, each drawn by a random initializer
    (a Keras ``RandomInitializer``) or filled by a constant one."""
    trainable = {id(w) for w in getattr(op, "trainable_weights", [])}
    out = []
    for w in getattr(op, "weights", []):
        names = _INITIALIZERS.get(w.name, (f"{w.name}_initializer",))
        init = next((getattr(op, n) for n in names if getattr(op, n, None) is not None), None)
        drawn = any(c.__name__ == "RandomInitializer" for c in type(init).__mro__)
        out.append(Variable(math.prod(w.shape), drawn, id(w) in trainable))
    return tuple(out)


def _conv_scratch(op: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """The im2col buffers of a plain 2-D convolution's backward (depthwise and separable
    convolutions have kernels of their own, not modelled here)."""
    classes = {c.__name__ for c in type(op).__mro__}
    if "BaseConv" not in classes or classes & {"BaseDepthwiseConv", "BaseSeparableConv"}:
        return 0, 0
    if len(shape) != 3 or getattr(op, "groups", 1) != 1:
        return 0, 0
    cin = op.kernel.shape[-2]
    return conv_backprop_scratch(shape[0] * shape[1], math.prod(op.kernel_size), cin, shape[-1])


def _backward_buffers(op: Any, out: int, trainable: int, inference: bool) -> tuple[bool, int]:
    """(input gradient written over the output gradient?, backward temporaries in values).

    Elementwise gradients (ReLU, inference BatchNorm's scale, a dropout mask) reuse their
    output gradient's buffer in TensorFlow. A training-mode BatchNorm is not fused in Keras 3:
    its input gradient sums three paths (the scale, the mean, the variance) through
    full-size temporaries, two alive at a time beside the output and input gradients
    (measured with either set of CPU kernels).
    """
    name = type(op).__name__
    classes = {c.__name__ for c in type(op).__mro__}
    if "BatchNormalization" in classes:
        training = trainable > 0 and not inference
        return (False, 2 * out) if training else (True, 0)
    if name == "ReLU":
        return True, 0
    if name == "Activation":
        act = getattr(getattr(op, "activation", None), "__name__", "linear")
        return act in _OUTPUT_GRAD_ACTIVATIONS or act == "linear", 0
    if name == "Dropout":
        return not inference and op.noise_shape is None, 0
    return False, 0


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
        # max_value 6 alone runs tf.nn.relu6 (Keras's ReLU.static_call), whose gradient
        # reads the output like ReLU's; other caps, slopes and thresholds read the input.
        plain = op.max_value in (None, 6) and not op.negative_slope and not op.threshold
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
