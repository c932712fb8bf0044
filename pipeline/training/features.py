"""The phase-1 feature cache: the frozen base's pooled features, computed once per image.

With the base frozen and nothing augmented, every epoch of phase 1 pushes the same pixels
through the same frozen base (the Keras guide's way). Pooling each image once and training
the classifier's own head layers (``pipeline.model.build_feature_head``) on the stored
vectors gives the same head, the same updates and the same weights, for the cost of one
inference pass instead of one per epoch. Both ways draw batches in the same shuffled order
(``frozen_train_dataset``), so they can be compared step for step.

Cached files live in data/<dataset>/features/, keyed by backbone, a fingerprint of the
base's weights, image size, evaluation crop, compute precision and the manifest's rows;
a file whose key matches is reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.backbones import Backbone, preprocess
from pipeline.config import Config, InputConfig
from pipeline.data.manifest import ManifestRow
from pipeline.files import atomic_path, write_json
from pipeline.inputs import build_eval_dataset, decode_center
from pipeline.model import build_feature_extractor, get_base

CACHE_FOLDER = "features"
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class CachedFeatures:
    features: np.ndarray  # (images, feature width) float32, in manifest order
    path: Path
    reused: bool
    seconds: float  # spent extracting (0 when reused)


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the base's weight values: the same file, seed or download gives the same."""
    digest = hashlib.sha256()
    for value in get_base(model).get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _rows_fingerprint(rows: Sequence[ManifestRow]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r.path}\0{r.sha256}\0{r.orientation}\0{r.decoder}\n".encode())
    return digest.hexdigest()


def cache_key(cfg: Config, weights_sha: str, rows: Sequence[ManifestRow]) -> dict[str, object]:
    """Everything the pooled features depend on."""
    return {
        "backbone": cfg.model.backbone,
        "alpha": cfg.model.alpha,
        "weights": cfg.model.weights,
        "weights_sha256": weights_sha,
        "image_size": cfg.image_size,
        "eval_crop_fraction": cfg.input.eval_crop_fraction,
        "compute_dtype": keras.mixed_precision.global_policy().compute_dtype,
        "rows": len(rows),
        "rows_sha256": _rows_fingerprint(rows),
    }


def cache_path(cfg: Config, key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{cfg.model.backbone}-{cfg.image_size}px-{digest}.npy"
    return cfg.dataset_dir() / CACHE_FOLDER / name


def extract_features(
    model: keras.Model,
    rows: Sequence[ManifestRow],
    i: InputConfig,
    backbone: Backbone,
    batch_size: int,
    desc: str = "Extracting features",
) -> np.ndarray:
    """Pooled base features of the evaluation view of every row, in order (one pass)."""
    from tqdm import tqdm

    extractor = build_feature_extractor(model)
    if not rows:  # a split with no images (a data set without a test split)
        return np.zeros((0, extractor.output.shape[-1]), np.float32)
    size = model.input_shape[1]
    run = tf.function(  # one trace for every batch size, the last partial one included
        lambda images: extractor(images, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )
    dataset = build_eval_dataset(rows, i, size, backbone=backbone, batch_size=batch_size)
    batches = []
    with tqdm(total=len(rows), desc=desc, unit="img", leave=False, disable=None) as bar:
        for images in dataset:
            batches.append(np.asarray(run(images), np.float32))
            bar.update(len(batches[-1]))
    return np.concatenate(batches)


def load_or_extract(
    model: keras.Model,
    rows: Sequence[ManifestRow],
    cfg: Config,
    backbone: Backbone,
    batch_size: int,
    weights_sha: str,
    split: str,
) -> CachedFeatures:
    """The cached features for these rows, extracted and stored first when missing."""
    key = cache_key(cfg, weights_sha, rows)
    path = cache_path(cfg, key)
    if path.is_file():
        features = np.load(path)
        if features.shape[0] == len(rows):
            return CachedFeatures(features, path, True, 0.0)
    start = time.perf_counter()
    features = extract_features(
        model, rows, cfg.input, backbone, batch_size, f"Caching {split} features"
    )
    seconds = time.perf_counter() - start
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, features)
    write_json(path.with_suffix(".json"), {**key, "split": split, "seconds": seconds})
    return CachedFeatures(features, path, False, seconds)


def reuse_or_extract(
    model: keras.Model,
    rows: Sequence[ManifestRow],
    cfg: Config,
    backbone: Backbone,
    batch_size: int,
    desc: str,
) -> np.ndarray:
    """The rows' features from the cache when one was made for this base's exact weights
    (a run that kept phase 1 still has the pretrained base), else one pass, not stored: a
    fine-tuned base's features serve only its own run."""
    path = cache_path(cfg, cache_key(cfg, weights_fingerprint(model), rows))
    if path.is_file():
        features = np.load(path)
        if features.shape[0] == len(rows):
            return features
    return extract_features(model, rows, cfg.input, backbone, batch_size, desc)


# ----------------------------------------------------------------------------- datasets


def frozen_train_dataset(
    indices: np.ndarray, batch_size: int, seed: int, load: Callable
) -> tf.data.Dataset:
    """Items in a fresh shuffled order every pass, full batches: the same order whether
    ``load`` gathers cached features or decodes images."""
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def ordered_dataset(indices: np.ndarray, batch_size: int, load: Callable) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def feature_loader(features: np.ndarray, labels: np.ndarray, num_classes: int) -> Callable:
    """index -> (cached feature vector, one-hot label)."""
    table = tf.constant(features)
    label_table = tf.constant(labels.astype(np.int32))

    def load(i):
        return tf.gather(table, i), tf.one_hot(tf.gather(label_table, i), num_classes)

    return load


def image_loader(
    rows: Sequence[ManifestRow], backbone: Backbone, size: int, fraction: float, num_classes: int
) -> Callable:
    """index -> (evaluation view of the image, preprocessed; one-hot label): the pixels the
    cached features were computed from, decoded by the input pipeline's own code."""
    paths = tf.constant([r.path for r in rows])
    decoders = tf.constant([r.decoder for r in rows])
    orientations = tf.constant([r.orientation for r in rows], tf.int32)
    labels = tf.constant([r.label_index for r in rows], tf.int32)

    def load(i):
        image = decode_center(
            tf.gather(paths, i), tf.gather(decoders, i), tf.gather(orientations, i), size, fraction
        )
        return preprocess(image, backbone), tf.one_hot(tf.gather(labels, i), num_classes)

    return load
