"""Temperature scaling (pipeline.evaluate.calibration, pipeline.model.fold_temperature) and
what the train stage records of it, on the shared trained run."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from scipy.special import softmax

from pipeline.data.provenance import load_run_data
from pipeline.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax_with_temperature,
    uncalibrated,
)
from pipeline.model import HEAD_NAME, fold_temperature, head_logits
from pipeline.predict.classifier import load_classifier
from pipeline.summary import read_summary


def _tiny_softmax_model(classes: int = 4, width: int = 6) -> keras.Model:
    inputs = keras.Input((width,))
    outputs = keras.layers.Dense(classes, activation="softmax", name=HEAD_NAME)(inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer(HEAD_NAME).set_weights(
        [rng.normal(0, 2, (width, classes)).astype("float32"), rng.normal(0, 1, classes)]
    )
    return model


def test_folded_head_outputs_softmax_of_logits_over_t():
    model = _tiny_softmax_model()
    x = np.random.default_rng(1).normal(size=(32, 6)).astype("float32")
    logits = head_logits(model, x)
    before = model.predict_on_batch(x)
    fold_temperature(model, 2.5)
    after = model.predict_on_batch(x)
    np.testing.assert_allclose(after, softmax(logits / 2.5, axis=1), atol=1e-6)
    assert (after.argmax(1) == before.argmax(1)).all()  # the order of the logits is kept
    np.testing.assert_allclose(uncalibrated(after, 2.5), before, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_fold_refuses_a_temperature_that_is_not_positive(bad):
    with pytest.raises(ValueError, match="temperature must be positive"):
        fold_temperature(_tiny_softmax_model(), bad)


def test_fit_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (5000, 5))
    truth = softmax_with_temperature(logits, 2.0)
    y = np.array([rng.choice(5, p=p) for p in truth])
    assert fit_temperature(logits, y) == pytest.approx(2.0, rel=0.08)
    # and the fitted probabilities are better calibrated than the overconfident ones
    fitted = softmax_with_temperature(logits, fit_temperature(logits, y))
    assert expected_calibration_error(y, fitted) < expected_calibration_error(
        y, softmax(logits, axis=1)
    )


def test_the_run_records_its_temperature_and_folds_it_into_the_model(trained_run):
    _, run_dir = trained_run
    calibration = read_summary(run_dir).calibration
    assert calibration is not None and calibration.skipped is None
    assert calibration.temperature > 0 and calibration.temperature != 1.0
    assert calibration.images == len(load_run_data(run_dir).rows("val"))
    assert calibration.val_loss_after <= calibration.val_loss_before  # what T minimises


@pytest.fixture(scope="module")
def smoothed_run(flowers_prepared, mobilenet_weights, tmp_path_factory):
    """A run made underconfident on purpose (label smoothing 0.5 on a gradient-fitted head),
    so that temperature scaling has something to correct beyond the noise of 53 photos in
    15 bins. (The shared trained_run fits its head exactly, with C chosen on validation's
    log loss, which leaves T near 1: ECE then moves by chance, either way.)"""
    from pipeline.config import with_overrides
    from pipeline.training import train

    cfg, _ = flowers_prepared
    cfg = with_overrides(
        cfg,
        {
            "paths.models": str(tmp_path_factory.mktemp("smoothed")),
            "model.backbone": "mobilenet",
            "model.alpha": 0.25,
            "model.weights": str(mobilenet_weights),
            "train.head_fit": "gradient",
            "train.head_epochs": 5,
            "train.head_lr": 1e-2,
            "train.label_smoothing": 0.5,
            "train.fine_tune_epochs": 0,
            "train.run_name": "smoothed",
        },
    )
    return Path(train(cfg).run_dir)


@pytest.mark.slow  # trains its own run: about 30 s on 2 cores
def test_calibration_error_after_temperature_scaling_is_not_above_before(smoothed_run):
    """Issue 27: "Expected calibration error after temperature scaling is not above the
    error before it, on validation and test." The saved model gives the calibrated
    probabilities; the uncalibrated ones are recovered exactly from them (p^T renormalised)."""
    clf = load_classifier(smoothed_run)
    calibration = read_summary(smoothed_run).calibration
    assert calibration.temperature < 1  # underconfident: T sharpens
    run_data = load_run_data(smoothed_run)
    for split in ("val", "test"):
        rows = run_data.rows(split)
        y = np.array([r.label_index for r in rows])
        after = clf.probabilities(rows)
        before = uncalibrated(after, calibration.temperature)
        assert (after.argmax(1) == before.argmax(1)).all()  # accuracy cannot change
        ece_before = expected_calibration_error(y, before)
        ece_after = expected_calibration_error(y, after)
        assert ece_after <= ece_before, (split, ece_before, ece_after)
        if split == "val":  # what the train stage recorded is what the saved model gives
            assert ece_before == pytest.approx(calibration.ece_before, abs=1e-4)
            assert ece_after == pytest.approx(calibration.ece_after, abs=1e-4)
