"""Temperature scaling (pipeline.evaluate.calibration, pipeline.model.fold_temperature) and
what the train stage records of it, on the shared trained run."""

from __future__ import annotations

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


def test_calibration_error_after_temperature_scaling_is_not_above_before(trained_run):
    """Issue 27: "Expected calibration error after temperature scaling is not above the
    error before it, on validation and test." The saved model gives the calibrated
    probabilities; the uncalibrated ones are recovered exactly from them (p^T renormalised)."""
    _, run_dir = trained_run
    clf = load_classifier(run_dir)
    temperature = read_summary(run_dir).calibration.temperature
    run_data = load_run_data(run_dir)
    for split in ("val", "test"):
        rows = run_data.rows(split)
        y = np.array([r.label_index for r in rows])
        after = clf.probabilities(rows)
        before = uncalibrated(after, temperature)
        assert (after.argmax(1) == before.argmax(1)).all()
        ece_before = expected_calibration_error(y, before)
        ece_after = expected_calibration_error(y, after)
        print(f"{split}: T {temperature:.3f}, ECE {ece_before:.4f} -> {ece_after:.4f}")
        assert ece_after <= ece_before, split
