"""pipeline.model: every backbone builds with its head, freezing follows the phases, weights
resolve offline with a clear error, and the feature head is the classifier's own head."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.backbones import BACKBONES, feature_width, get_backbone
from pipeline.config import load_config
from pipeline.model import (
    HEAD_NAME,
    POOL_NAME,
    WeightsError,
    build_base,
    build_classifier,
    build_feature_extractor,
    build_feature_head,
    classifier_spec,
    freeze_for_phase,
    get_base,
    resolve_weights,
    training_forward,
)

# Small inputs keep the whole table under a few seconds per backbone.
TEST_SIZES = {"inception_v3": 75, "xception": 71}
TEST_ALPHAS = {"mobilenet": 0.25, "mobilenet_v2": 0.35}
PRETRAINED = [name for name, b in BACKBONES.items() if b.pretrained]


def make_cfg(backbone: str, **overrides):
    size = TEST_SIZES.get(backbone, 64)
    values = {
        "model.backbone": backbone,
        "model.weights": "none",
        "model.alpha": TEST_ALPHAS.get(backbone, 1.0),
        "input.image_size": size,
        **overrides,
    }
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def batch_norm_state(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(w)
        for layer in get_base(model).layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.weights
    ]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_builds_a_float32_softmax_head(backbone):
    cfg = make_cfg(backbone)
    model = build_classifier(classifier_spec(cfg), num_classes=3)
    size = cfg.image_size
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 3)
    width = feature_width(get_backbone(backbone), cfg.model.alpha)
    assert model.get_layer(POOL_NAME).output.shape[-1] == width
    assert model.get_layer(HEAD_NAME).dtype_policy.compute_dtype == "float32"
    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    before = batch_norm_state(model)
    probs = np.array(training_forward(model, get_backbone(backbone))(x))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    if get_backbone(backbone).pretrained:
        # The base runs in inference mode during training, even with every layer
        # trainable: its BatchNorm statistics stay as they were.
        for old, new in zip(before, batch_norm_state(model)):
            np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("backbone", PRETRAINED)
def test_phases_freeze_the_base_then_unfreeze_its_top_without_batchnorm(backbone):
    cfg = make_cfg(backbone)
    model = build_classifier(classifier_spec(cfg), num_classes=3)
    base = get_base(model)
    freeze_for_phase(model, classifier_spec(cfg), 1)
    assert base.trainable_weights == []
    assert {v.path.split("/")[0] for v in model.trainable_weights} == {HEAD_NAME}

    freeze_for_phase(model, classifier_spec(cfg), 2)
    names = [layer.name for layer in base.layers]
    cut = names.index(classifier_spec(cfg).fine_tune_after)
    trainable = [i for i, layer in enumerate(base.layers) if layer.trainable and layer.weights]
    assert trainable and min(trainable) > cut
    for i, layer in enumerate(base.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
        elif i > cut and layer.weights:
            assert layer.trainable, layer.name
        elif i <= cut:
            assert not layer.trainable_weights, layer.name


def test_inception_v3_fine_tunes_from_mixed9_up():
    cfg = make_cfg("inception_v3")
    model = build_classifier(classifier_spec(cfg), num_classes=2)
    freeze_for_phase(model, classifier_spec(cfg), 2)
    base = get_base(model)
    names = [layer.name for layer in base.layers]
    trainable = [i for i, layer in enumerate(base.layers) if layer.trainable_weights]
    # Everything after mixed8's output trains: the mixed9 and mixed10 blocks.
    assert trainable[0] == names.index("mixed8") + 1
    assert trainable[-1] > names.index("mixed9") and names[-1] == "mixed10"


def test_unknown_cut_point_is_named_in_the_error():
    cfg = make_cfg("mobilenet", **{"model.fine_tune_after": "no_such_layer"})
    model = build_classifier(classifier_spec(cfg), num_classes=2)
    with pytest.raises(ValueError, match=r"model\.fine_tune_after='no_such_layer'.*conv_pw"):
        freeze_for_phase(model, classifier_spec(cfg), 2)


def test_small_cnn_trains_whole_in_every_phase():
    cfg = make_cfg("small_cnn")
    model = build_classifier(classifier_spec(cfg), num_classes=2)
    freeze_for_phase(model, classifier_spec(cfg), 1)
    assert len(get_base(model).trainable_weights) == 4 * 3  # conv kernel, gamma, beta


def test_feature_head_is_the_classifier_head():
    cfg = make_cfg("inception_v3", **{"model.dropout": 0.5})
    model = build_classifier(classifier_spec(cfg), num_classes=4)
    head = build_feature_head(model)
    extractor = build_feature_extractor(model)
    assert {id(v) for v in head.trainable_weights} == {
        id(v) for v in model.get_layer(HEAD_NAME).weights
    }
    x = np.random.default_rng(1).uniform(-1, 1, (3, 75, 75, 3)).astype("float32")
    via_features = np.array(head(extractor(x), training=False))
    np.testing.assert_allclose(via_features, np.array(model(x, training=False)), atol=1e-6)


def test_mixed_precision_keeps_the_softmax_in_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(
            classifier_spec(make_cfg("small_cnn", **{"input.image_size": 32})), 2
        )
        assert get_base(model).layers[1].compute_dtype == "float16"
        out = model(np.zeros((1, 32, 32, 3), "float32"))
        assert out.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ----------------------------------------------------------------------------- weights


def test_resolve_weights_none_and_missing_file(tmp_path):
    inception = get_backbone("inception_v3")
    assert resolve_weights(inception, "none") is None
    assert resolve_weights(get_backbone("small_cnn"), "imagenet") is None
    with pytest.raises(WeightsError, match=r"no_such\.h5: no such file.*'imagenet' or 'none'"):
        resolve_weights(inception, str(tmp_path / "no_such.h5"))


def test_offline_imagenet_error_names_the_file_url_and_both_fixes(tmp_path, monkeypatch):
    import pipeline.model as model_module

    monkeypatch.setattr(model_module, "KERAS_CACHE", tmp_path)
    unreachable = "http://127.0.0.1:9/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    monkeypatch.setattr(model_module, "weights_url", lambda *a, **k: unreachable)
    name = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(WeightsError) as info:
        resolve_weights(get_backbone("inception_v3"), "imagenet")
    message = str(info.value)
    assert "\n" not in message
    for part in (name, unreachable, str(tmp_path), f"WEIGHTS=/path/to/{name}", "WEIGHTS=none"):
        assert part in message


def test_a_cached_imagenet_file_is_used_by_path(tmp_path, monkeypatch, mobilenet_weights):
    import pipeline.model as model_module

    monkeypatch.setattr(model_module, "KERAS_CACHE", mobilenet_weights.parent)
    resolved = resolve_weights(get_backbone("mobilenet"), "imagenet", alpha=0.25, size=150)
    assert resolved == str(mobilenet_weights)


@pytest.mark.parametrize("size", [128, 150, 224])
def test_imagenet_mobilenet_weights_load_by_path_at_any_size(size, mobilenet_weights):
    cfg = make_cfg("mobilenet", **{"input.image_size": size})
    loaded = build_base(classifier_spec(cfg), str(mobilenet_weights))
    reference = build_base(
        classifier_spec(make_cfg("mobilenet", **{"input.image_size": 224})), str(mobilenet_weights)
    )
    random = build_base(classifier_spec(cfg), "none")
    for a, b in zip(loaded.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(loaded.get_weights()[0], random.get_weights()[0])
