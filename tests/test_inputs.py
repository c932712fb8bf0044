"""The input pipeline on real photos: shapes, value range, labels, seeds, evaluation crops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline.config import Config, with_overrides
from pipeline.data.manifest import load_split
from pipeline.images import load_rgb
from pipeline.inputs import build_batch_augmenter, decode_center, sample_augmented
from tests.support import eval_dataset, train_dataset


@pytest.fixture(scope="module")
def flowers(flowers_prepared):
    cfg, result = flowers_prepared
    # 48 images of mixed classes (sorted by hash), a multiple of the batch size.
    rows = sorted(load_split(result.dataset_dir, "train"), key=lambda r: r.sha256)[:48]
    return cfg, rows, len(result.classes)


def first_batch(ds):
    images, labels = next(iter(ds))
    return images.numpy(), labels.numpy()


def test_train_batches_have_shape_range_and_the_manifest_labels(flowers):
    cfg, rows, n = flowers
    ds = train_dataset(rows, cfg, n)
    seen = []
    for images, labels in ds:
        assert images.shape == (16, 128, 128, 3) and images.dtype == tf.float32
        assert labels.shape == (16, n)
        assert images.numpy().min() >= -1.0 and images.numpy().max() <= 1.0
        assert images.numpy().std() > 0.1  # real pixels, not a constant
        np.testing.assert_array_equal(labels.numpy().sum(axis=1), 1.0)
        seen.extend(np.argmax(labels.numpy(), axis=1).tolist())
    assert sorted(seen) == sorted(r.label_index for r in rows)  # one epoch, every image once


def test_seed_fixes_order_and_augmentation_and_epochs_differ(flowers):
    cfg, rows, n = flowers
    cfg = with_overrides(cfg, {"input.deterministic": True})
    a = train_dataset(rows, cfg, n, seed=1)
    b = train_dataset(rows, cfg, n, seed=1)
    c = train_dataset(rows, cfg, n, seed=2)
    np.testing.assert_array_equal(first_batch(a)[0], first_batch(b)[0])
    assert not np.array_equal(first_batch(a)[0], first_batch(c)[0])
    epoch1, epoch2 = (first_batch(a)[0] for _ in range(2))
    assert not np.array_equal(epoch1, epoch2)  # a fresh order and fresh crops every epoch


def test_eval_is_ordered_and_equals_a_centre_crop(flowers):
    cfg, rows, n = flowers
    ds = eval_dataset(rows[:10], cfg, n, batch_size=4)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    labels = np.concatenate([np.argmax(b[1].numpy(), axis=1) for b in batches])
    assert labels.tolist() == [r.label_index for r in rows[:10]]
    again = np.concatenate([b[0].numpy() for b in eval_dataset(rows[:10], cfg, n)])
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), again)
    # The same view computed independently with PIL: centre square of 87.5%, resized.
    row = rows[0]
    image = load_rgb(row.path)
    h, w = image.shape[:2]
    side = int(min(h, w) * cfg.input.eval_crop_fraction)
    top, left = (h - side) // 2, (w - side) // 2
    expected = Image.fromarray(image[top : top + side, left : left + side]).resize(
        (128, 128), Image.BILINEAR, reducing_gap=None
    )
    got = decode_center(
        tf.constant(row.path),
        tf.constant(row.decoder),
        tf.constant(row.orientation),
        128,
        cfg.input.eval_crop_fraction,
    )
    difference = np.abs(got.numpy() - np.asarray(expected, np.float32)).mean()
    assert difference < 6.0, difference
    assert (again[0] * 127.5 + 127.5 - got.numpy()).__abs__().max() < 1e-3


def test_keras_augmentation_options_and_mixing(flowers):
    cfg, rows, n = flowers
    heavy = with_overrides(
        cfg,
        {
            "input.rotation": 0.1,
            "input.zoom": 0.1,
            "input.contrast": 0.2,
            "input.brightness": 0.2,
            "input.randaugment": True,
            "input.mixup": 0.4,
            "input.cutmix": 1.0,
        },
    )
    images, labels = first_batch(train_dataset(rows, heavy, n))
    assert images.shape == (16, 128, 128, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels.max(axis=1) < 0.999).any()  # mixed: some labels are soft


@pytest.mark.parametrize("mixer", ["input.mixup", "input.cutmix"])
def test_mixed_labels_match_mixed_pixels(mixer):
    """Each class is a flat grey level, so a mixed image's mean pixel is what its soft label
    says: the label weights times the classes' grey levels (a bug mixed the labels by one
    random draw and the pixels by another)."""

    classes, size = 5, 128
    labels = np.eye(classes, dtype=np.float32)[np.arange(16) % classes]
    grey = 20.0 + 50.0 * np.arange(classes, dtype=np.float32)
    images = np.broadcast_to((labels @ grey)[:, None, None, None], (16, size, size, 3))
    augment = build_batch_augmenter(with_overrides(Config(), {mixer: 1.0}).input, seed=3)
    for draw in range(3):
        mixed, soft = augment(tf.constant(images), tf.constant(labels), tf.constant([draw, 0]))
        assert (soft.numpy().max(axis=1) < 0.999).any()  # something was mixed
        # CutMix weighs labels by its box's real-valued area, the pixels by whole pixels:
        # up to about 1% of the grey range apart at 128 px. A mismatched pairing is 10x off.
        np.testing.assert_allclose(
            mixed.numpy().mean(axis=(1, 2, 3)), soft.numpy() @ grey, atol=0.015 * np.ptp(grey)
        )


def test_sample_augmented_gives_viewable_pixels(flowers):
    cfg, rows, _ = flowers
    images, labels = sample_augmented(rows, cfg.input, cfg.image_size, cfg.train.seed, count=8)
    assert images.shape == (8, 128, 128, 3)
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 100
    assert set(labels) <= {r.label_index for r in rows}
