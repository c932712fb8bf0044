"""The input pipeline: manifests to batches, with the same decoding for every stage.

Training images are Inception-style random resized crops: for JPEGs the crop window is
drawn first and only that window is decoded (``decode_and_crop_jpeg``), which gives scale
and aspect-ratio augmentation for less than the cost of a full decode. Evaluation and
prediction take a centred square (``eval_crop_fraction`` of the shorter side) and resize
it. Both apply the EXIF orientation and the backbone's own preprocessing, so training,
evaluation and prediction see the same pixels. Batches are ``(images, one-hot labels)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from pipeline.backbones import Backbone, check_input_size, preprocess
from pipeline.config import InputConfig
from pipeline.data.manifest import ManifestRow
from pipeline.images import DECODE_JPEG, DECODE_PIL, load_rgb

AUTOTUNE = tf.data.AUTOTUNE


def _plain(fn):
    """``fn`` for ``Dataset.map`` without AutoGraph. Its branches are tf.cond and
    tf.switch_case already (Python ``if`` only on Python values), so AutoGraph's rewrite of
    its source would change nothing, yet it costs about a second per dataset built: most of
    a short run's start-up."""
    return tf.autograph.experimental.do_not_convert(fn)


# ----------------------------------------------------------------------------- decoding


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear resize to size x size, antialiased only when shrinking more than twofold.

    Antialiasing halves the pipeline's throughput (measured by benchmarks/input_pipeline.py)
    and changes nothing visible when upsampling or shrinking mildly; it matters for large
    photos, which get it. Clipped: the filters can overshoot [0, 255] by rounding.
    """
    shrink = tf.reduce_min(tf.shape(image)[:2]) > 2 * size
    resized = tf.cond(
        shrink,
        lambda: tf.image.resize(image, [size, size], antialias=True),
        lambda: tf.image.resize(image, [size, size]),
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


# EXIF orientations 1..8 as PIL's exif_transpose applies them: transpose first (5-8), then
# reverse rows and/or columns. 1 as stored, 2 mirrored, 3 rotated 180, 4 flipped vertically,
# 5 transposed, 6 rotated 90 clockwise to view, 7 transversed, 8 rotated 90 counter-clockwise.
_TRANSPOSED = (False, False, False, False, True, True, True, True)
_REVERSED = ((0, 0), (0, 1), (1, 1), (1, 0), (0, 0), (0, 1), (1, 1), (1, 0))  # (rows, columns)


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply an EXIF orientation tag (1..8) to an HxWxC image, as PIL's exif_transpose.

    A permutation and a reversal chosen by table lookup: an eight-way tf.switch_case would
    build eight branch graphs for every dataset, a large part of a short run's start-up."""
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    axes = tf.boolean_mask([0, 1], tf.gather(tf.cast(_REVERSED, tf.bool), index))
    oriented = tf.reverse(_transposed_if(image, tf.gather(_TRANSPOSED, index)), axes)
    oriented.set_shape([None, None, image.shape[-1]])
    return oriented


def _transposed_if(image: tf.Tensor, transpose: tf.Tensor) -> tf.Tensor:
    """The image with height and width swapped when ``transpose``.

    Gathered, not ``tf.transpose``d: where TensorFlow's oneDNN does not count the CPU as
    AVX-512 capable, its graph pass logs an error-level line ("oneDNN supports DT_UINT8
    only on platforms with AVX-512") for any uint8 Transpose in a graph, and Grappler
    moves a cast to float past a transpose, so transposing a cast copy does not avoid it.
    As fast as the transpose on a 12-megapixel photo.
    """

    def gathered() -> tf.Tensor:
        shape = tf.shape(image)
        column, row = tf.meshgrid(tf.range(shape[1]), tf.range(shape[0]), indexing="ij")
        return tf.gather_nd(image, tf.stack([row, column], axis=-1))

    return tf.cond(transpose, gathered, lambda: image)


def _load_rgb_from_tensor(path: np.ndarray | bytes) -> np.ndarray:
    raw = path.item() if isinstance(path, np.ndarray) else path
    return load_rgb(os.fsdecode(raw) if isinstance(raw, bytes) else str(raw))


def _decode_pil(path: tf.Tensor) -> tf.Tensor:
    image = tf.numpy_function(_load_rgb_from_tensor, [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def decode_full(path: tf.Tensor, decoder: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The whole image as oriented HxWx3 uint8."""

    def native() -> tf.Tensor:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return orient(image, orientation)

    image = tf.cond(tf.equal(decoder, DECODE_PIL), lambda: _decode_pil(path), native)
    image.set_shape([None, None, 3])
    return image


def _crop_window(shape: tf.Tensor, fraction: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Offsets and side of the centred square covering `fraction` of the shorter side."""
    height, width = shape[0], shape[1]
    side = tf.maximum(
        1, tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * fraction, tf.int32)
    )
    return (height - side) // 2, (width - side) // 2, side


def _jpeg_center(data: tf.Tensor, fraction: float) -> tf.Tensor:
    """The centred square of JPEG bytes, decoding only that window (not yet oriented)."""
    top, left, side = _crop_window(tf.image.extract_jpeg_shape(data), fraction)
    return tf.io.decode_and_crop_jpeg(data, tf.stack([top, left, side, side]), channels=3)


def _center_square(image: tf.Tensor, fraction: float) -> tf.Tensor:
    top, left, side = _crop_window(tf.shape(image), fraction)
    return image[top : top + side, left : left + side]


def decode_center(path, decoder, orientation, size: int, fraction: float) -> tf.Tensor:
    """Evaluation view: centred square crop, resized to size x size, float32 in [0, 255].

    A centred square is the same region whatever the orientation, so JPEGs decode only it.
    """

    def jpeg() -> tf.Tensor:
        return orient(_jpeg_center(tf.io.read_file(path), fraction), orientation)

    def other() -> tf.Tensor:
        return _center_square(decode_full(path, decoder, orientation), fraction)

    crop = tf.cond(tf.equal(decoder, DECODE_JPEG), jpeg, other)
    crop.set_shape([None, None, 3])
    return _resize(crop, size)


def decode_center_bytes(data: tf.Tensor, size: int, fraction: float) -> tf.Tensor:
    """``decode_center`` for encoded bytes (JPEG, PNG, GIF's first frame, BMP) instead of a
    file: the same crop and resize, as served by the SavedModel's ``serve_bytes``. Bytes carry
    no orientation for TensorFlow to read, so EXIF rotation is not applied."""

    def other() -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return _center_square(image, fraction)

    crop = tf.cond(tf.io.is_jpeg(data), lambda: _jpeg_center(data, fraction), other)
    crop.set_shape([None, None, 3])
    return _resize(crop, size)


def decode_random_crop(
    path,
    decoder,
    orientation,
    seed,
    size: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tf.Tensor:
    """Training view: a random resized crop, float32 in [0, 255]."""

    def sample(shape: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=aspect,
            area_range=area,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, box

    def jpeg() -> tf.Tensor:
        data = tf.io.read_file(path)
        begin, box = sample(tf.image.extract_jpeg_shape(data))
        window = tf.stack([begin[0], begin[1], box[0], box[1]])
        return orient(tf.io.decode_and_crop_jpeg(data, window, channels=3), orientation)

    def other() -> tf.Tensor:
        image = decode_full(path, decoder, orientation)
        begin, box = sample(tf.shape(image))
        return tf.slice(image, begin, box)

    crop = tf.cond(tf.equal(decoder, DECODE_JPEG), jpeg, other)
    crop.set_shape([None, None, 3])
    return _resize(crop, size)


# ----------------------------------------------------------------------------- augmentation


def _mixed(mixer, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One call, so images and labels are mixed by the same random draw (two calls would
    pair each image with another image's labels)."""
    out = mixer({"images": images, "labels": labels}, training=True)
    return out["images"], out["labels"]


def build_batch_augmenter(i: InputConfig, seed: int):
    """Keras 3 augmentation layers applied per batch, or None when none is configured."""
    import keras

    layers = []
    if i.rotation:
        layers.append(keras.layers.RandomRotation(i.rotation, seed=seed))
    if i.zoom:
        layers.append(keras.layers.RandomZoom(i.zoom, seed=seed + 1))
    if i.contrast:
        layers.append(keras.layers.RandomContrast(i.contrast, seed=seed + 2))
    if i.brightness:
        layers.append(
            keras.layers.RandomBrightness(i.brightness, value_range=(0, 255), seed=seed + 3)
        )
    if i.randaugment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed + 4))
    mixers = []
    if i.mixup:
        mixers.append(keras.layers.MixUp(alpha=i.mixup, seed=seed + 5))
    if i.cutmix:
        mixers.append(keras.layers.CutMix(factor=i.cutmix, seed=seed + 6))
    if not layers and not mixers:
        return None

    def augment(images: tf.Tensor, labels: tf.Tensor, batch_seed: tf.Tensor):
        for layer in layers:
            images = layer(images, training=True)
        images = tf.clip_by_value(images, 0.0, 255.0)
        if mixers:
            # One mixing method per batch, chosen at random when both are on (as timm does).
            pick = tf.random.stateless_uniform([], batch_seed, 0, len(mixers), tf.int32)
            branches = [lambda m=m: _mixed(m, images, labels) for m in mixers]
            images, labels = tf.switch_case(pick, branches)
        return images, labels

    return augment


# ----------------------------------------------------------------------------- datasets


def _columns(rows: Sequence[ManifestRow]) -> tuple[np.ndarray, ...]:
    if not rows:
        raise ValueError("no images to build a dataset from (the manifest is empty)")
    return (
        np.array([r.path for r in rows]),
        np.array([r.decoder for r in rows]),
        np.array([r.orientation for r in rows], np.int32),
        np.array([r.label_index for r in rows], np.int32),
    )


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def build_train_dataset(
    rows: Sequence[ManifestRow],
    i: InputConfig,
    size: int,
    num_classes: int,
    seed: int,
    *,
    backbone: Backbone | None,
    batch_size: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented, batched, prefetched; a fresh order and crops every epoch.
    Preprocessed for ``backbone``; raw pixels in [0, 255] when it is None."""
    if backbone is not None:
        check_input_size(backbone, size)
    batch_size = batch_size or i.batch_size
    area = (i.crop_area_min, 1.0)
    aspect = (i.crop_aspect_min, 1.0 / i.crop_aspect_min)

    def load(path, decoder, orientation, label, element_seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        image = decode_random_crop(path, decoder, orientation, crop_seed, size, area, aspect)
        if i.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image, tf.one_hot(label, num_classes)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.from_tensor_slices(_columns(rows))
    ds = ds.shuffle(min(len(rows), i.shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        _plain(lambda cols, s: load(*cols, s)), num_parallel_calls=AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=len(rows) >= batch_size, num_parallel_calls=AUTOTUNE)
    augment = build_batch_augmenter(i, seed)
    if augment is not None:
        batch_seeds = tf.data.Dataset.random(seed=seed + 7, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, batch_seeds.batch(2)).map(
            _plain(lambda batch, s: augment(batch[0], batch[1], s)), num_parallel_calls=AUTOTUNE
        )
    if backbone is not None:
        ds = ds.map(_plain(lambda x, y: (preprocess(x, backbone), y)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options(i.deterministic))


def build_eval_dataset(
    rows: Sequence[ManifestRow],
    i: InputConfig,
    size: int,
    *,
    backbone: Backbone | None,
    num_classes: int | None = None,
    batch_size: int | None = None,
) -> tf.data.Dataset:
    """In manifest order, centre-cropped; yields (images, one-hot) or images alone.
    Preprocessed for ``backbone``; raw pixels in [0, 255] (an exported file's input) when
    it is None."""
    if backbone is not None:
        check_input_size(backbone, size)

    def load(path, decoder, orientation, label):
        image = decode_center(path, decoder, orientation, size, i.eval_crop_fraction)
        if backbone is not None:
            image = preprocess(image, backbone)
        if num_classes is None:
            return image
        return image, tf.one_hot(label, num_classes)

    ds = tf.data.Dataset.from_tensor_slices(_columns(rows))
    ds = ds.map(_plain(load), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size or i.batch_size)
    return ds.prefetch(AUTOTUNE)


def sample_augmented(
    rows: Sequence[ManifestRow], i: InputConfig, size: int, seed: int, count: int = 16
) -> tuple[np.ndarray, list[int]]:
    """A batch of augmented training images in [0, 255] and their (majority) label indices."""
    num_classes = max(r.label_index for r in rows) + 1
    ds = build_train_dataset(
        rows, i, size, num_classes, seed, backbone=None, batch_size=min(count, len(rows))
    )
    images, labels = next(iter(ds))
    return images.numpy(), [int(i) for i in np.argmax(labels.numpy(), axis=1)]
