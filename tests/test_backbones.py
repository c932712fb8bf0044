"""The backbone table: preprocessing equal to Keras's own, sizes and names consistent."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from pipeline.backbones import BACKBONES, get_backbone, preprocess, preprocessed_range

KERAS_MODULES = {
    "inception_v3": "inception_v3",
    "mobilenet": "mobilenet",
    "mobilenet_v2": "mobilenet_v2",
    "efficientnet_b0": "efficientnet",
    "resnet50": "resnet50",
    "xception": "xception",
}
# Built here (pipeline/backbones/efficientnet_lite.py, preprocessing inside), tested in
# tests/test_efficientnet_lite.py.
BUILT_HERE = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


@pytest.mark.parametrize("name", sorted(KERAS_MODULES))
def test_preprocessing_equals_keras_preprocess_input(name):
    module = importlib.import_module(f"keras.applications.{KERAS_MODULES[name]}")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = module.preprocess_input(pixels.copy())
    got = preprocess(pixels, get_backbone(name)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    lo, hi = preprocessed_range(get_backbone(name))
    assert got.min() >= lo - 1e-4 and got.max() <= hi + 1e-4


def test_table_is_consistent():
    assert set(KERAS_MODULES) | BUILT_HERE | {"small_cnn"} == set(BACKBONES)
    for backbone in BACKBONES.values():
        assert backbone.min_size <= backbone.default_size
        assert backbone.pretrained == bool(backbone.weights_file)
    with pytest.raises(ValueError, match="Expected one of: inception_v3"):
        get_backbone("vgg16")
