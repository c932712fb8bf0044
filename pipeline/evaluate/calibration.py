"""Temperature scaling: one number T > 0 that divides a classifier's logits so that its
confidence matches its accuracy (Guo et al. 2017, "On calibration of modern neural
networks"). Pure functions on arrays; the train stage fits T on validation and folds it
into the model's head (``pipeline.model.fold_temperature``), evaluate reports what it did.

Dividing every logit by the same T > 0 keeps their order, so the predicted class, the
accuracy and every ranking metric are unchanged: only the probabilities move. The expected
calibration error is ``pipeline.evaluate.metrics.reliability``'s (15 equal-width bins).

>>> import numpy as np
>>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
>>> y = np.array([0, 1, 1, 0])  # half right at 98% confidence: T > 1 softens it
>>> round(fit_temperature(logits, y), 2) > 10
True
>>> p = softmax_with_temperature(logits, 2.0)
>>> np.allclose(uncalibrated(p, 2.0), softmax_with_temperature(logits, 1.0))
True
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from pipeline.evaluate.metrics import CalibrationScores, reliability

# T is searched over [1/20, 20]: far beyond what a trained network needs (Guo et al. report
# 1 to 3), and bounded so that a validation split without mistakes (T -> 0) stays finite.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), row by row, in float64."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def temperature_log_loss(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / T)."""
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(y_true)), np.asarray(y_true, int)].mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises the log loss of softmax(logits / T).

    Searched over log T (bounded Brent), where the loss is smooth and the bounds symmetric.
    """
    low, high = np.log(TEMPERATURE_BOUNDS)
    found = minimize_scalar(
        lambda log_t: temperature_log_loss(logits, y_true, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(found.x))


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling, from those after it: softmax(z / T)
    raised to the power T and renormalised is softmax(z) (exact up to float rounding;
    computed in log space so that tiny probabilities do not underflow)."""
    log_p = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None))
    return softmax(temperature * log_p, axis=1)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray) -> float:
    """ECE over 15 equal-width confidence bins: metrics.reliability's, named for reuse."""
    return reliability(np.asarray(y_true, int), np.asarray(probs))["expected_calibration_error"]


def calibration_scores(
    y_true: np.ndarray, probs: np.ndarray, temperature: float | None
) -> CalibrationScores | None:
    """The split's ECE with the run's temperature (``probs``, the model's) and without it
    (recovered from them); None for a run that was not calibrated. With input.tta=flip the
    "before" figure is of the averaged probabilities raised to the power T, close to but
    not exactly the uncalibrated average."""
    if temperature is None:
        return None
    before = reliability(np.asarray(y_true, int), uncalibrated(probs, temperature))
    return {
        "temperature": temperature,
        "ece_before": before["expected_calibration_error"],
        "ece_after": expected_calibration_error(y_true, probs),
        "reliability_before": before["bins"],
    }
