"""The default recipe: the exact phase-1 head, the warm-up and cosine schedule of phase 2,
the keep-the-better-phase rule, the frozen-feature baseline every run reports, and
test-time flip averaging."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.model import fold_temperature
from pipeline.summary import PhaseResult, TrainState, TrainSummary
from pipeline.training.head import C_GRID, fit_logistic_head
from pipeline.training.loop import warmup_cosine
from pipeline.training.phases import kept_phase, paired_gain


def blobs(seed: int, n: int, classes: int, width: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes with feature scales from 0.1 to 100 (unscaled, like
    pooled activations)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(classes, width))
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.normal(scale=1.5, size=(n, width))) * np.logspace(-1, 2, width)
    return x.astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 4])
def test_the_exact_head_is_scikit_learns_logistic_regression_at_the_best_c(classes):
    train_x, train_y = blobs(1, 300, classes)
    val_x, val_y = blobs(2, 120, classes)
    head = fit_logistic_head(train_x, train_y, val_x, val_y, classes)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=head.C, max_iter=5000))
    reference.fit(train_x.astype(np.float64), train_y)
    np.testing.assert_allclose(
        head.probabilities(val_x), reference.predict_proba(val_x.astype(np.float64)), atol=2e-3
    )
    assert head.kernel.shape == (train_x.shape[1], classes)
    losses = {row["C"]: row["val_loss"] for row in head.grid}
    assert set(losses) == set(C_GRID)
    assert losses[head.C] == min(losses.values())


def test_warmup_then_cosine_decay():
    schedule = warmup_cosine(1e-3, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    rates = [float(schedule(step)) for step in range(50)]
    assert rates[0] == pytest.approx(0.0)
    assert rates[10] == pytest.approx(1e-3)  # the peak after one epoch
    assert all(a < b for a, b in itertools.pairwise(rates[:11]))  # rising
    assert all(a > b for a, b in itertools.pairwise(rates[10:]))  # then falling
    assert rates[49] < 1e-5


def test_phase_two_is_kept_only_when_its_paired_gain_is_beyond_noise():
    rng = np.random.default_rng(0)
    one = rng.uniform(0.1, 2.0, 200)  # phase 1's per-image validation losses
    phase_one = PhaseResult(epochs=1, best_val_loss=float(one.mean()))

    def phases(two: np.ndarray) -> dict[int, PhaseResult]:
        gain = paired_gain(one, two)
        return {
            1: phase_one,
            2: PhaseResult(epochs=5, best_val_loss=gain.phase2_loss, val_gain=gain),
        }

    clear = phases(one - 0.05)  # every image a little better: z is large
    swings = np.resize([1.0, -1.0], 200)  # half the images much better, half much worse
    noisy = phases(one - 0.05 + swings)  # better on average, within the noise
    worse = phases(one + 0.05)
    assert clear[2].val_gain.z > 10
    assert noisy[2].val_gain.mean > 0 and noisy[2].val_gain.z < 1.645
    assert kept_phase(clear, min_z=1.645) == 2
    assert kept_phase(noisy, min_z=1.645) == 1
    assert kept_phase(noisy, min_z=0) == 2  # the plain rule keeps any mean gain
    assert kept_phase(worse, min_z=0) == 1
    assert kept_phase({1: phase_one}) == 1
    # A run recorded before the paired gain: its mean losses decide.
    assert kept_phase({1: phase_one, 2: PhaseResult(epochs=5, best_val_loss=0.0)}, 1.645) == 2


def test_phases_read_back_from_json_keep_their_keys_and_the_keep_rule():
    """state.json and summary.json key phases "1", "2"; the code numbers them, and a
    phase's JSON holds only the figures its kind of phase records."""
    gain = {"mean": 0.2, "se": 0.05, "z": 4.0, "images": 40, "phase1_loss": 0.9,
            "phase2_loss": 0.7}  # fmt: skip
    baseline = {"method": "logistic regression", "C": 1.0, "seconds": 0.5,
                "val": {"accuracy": 0.8, "macro_f1": 0.7, "loss": 0.6, "images": 40},
                "test": {}}  # fmt: skip
    one = {"method": "exact", "epochs": 1, "best_val_loss": 0.9, "resumed": False,
           "history": [{"epoch": 1}], "cached_features": True, "baseline": baseline,
           "feature_cache_reused": False}  # fmt: skip
    two = {"method": "gradient", "epochs": 3, "best_val_loss": 0.7, "stopped_early": False,
           "val_gain": gain, "first_trainable_layer": None, "schedule": "cosine"}  # fmt: skip
    state = TrainState.from_json({"phases": {"1": one, "2": two}})
    assert state.to_json() == {"phases": {"1": one, "2": two}}
    assert state.phases[2].val_gain.z == 4.0 and state.phases[1].baseline.test is None
    assert kept_phase(state.phases, min_z=1.645) == 2
    assert "history" not in state.phases[1].to_json(history=False)
    assert PhaseResult.from_json({"epochs": 0, "skipped": True}).to_json() == {
        "epochs": 0,
        "skipped": True,
    }
    summary = TrainSummary.from_dict({"phases": {"1": one}, "kept_phase": "1"})
    assert summary.kept_phase == 1
    written = summary.to_dict()
    assert written["kept_phase"] == "1" and "history" not in written["phases"]["1"]


# ----------------------------------------------------------------------------- real runs


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _features(summary: dict, split: str) -> np.ndarray:
    return np.load(summary["phases"]["1"]["feature_cache"][split])


def _labels(run_dir: Path, split: str) -> np.ndarray:
    from pipeline.data.manifest import load_split

    return np.array([r.label_index for r in load_split(run_dir / "data", split)])


def test_phase_one_is_at_least_as_good_as_frozen_feature_regressions(trained_run):
    """On validation, the exact head beats (or ties) logistic regressions on the raw
    frozen features at every C of the comparison grid, and scikit-learn agrees with
    the figure the run recorded."""
    _, run_dir = trained_run
    summary = _summary(run_dir)
    phase = summary["phases"]["1"]
    assert phase["method"] == "exact"
    train_x, val_x = _features(summary, "train"), _features(summary, "val")
    train_y, val_y = _labels(run_dir, "train"), _labels(run_dir, "val")
    for c in (0.1, 1.0, 10.0):
        other = LogisticRegression(C=c, max_iter=5000).fit(train_x, train_y)
        assert phase["best_val_loss"] <= log_loss(val_y, other.predict_proba(val_x)) + 1e-3, c


def test_the_baseline_is_recomputed_from_the_runs_own_features(trained_run):
    _, run_dir = trained_run
    summary = _summary(run_dir)
    baseline = summary["baseline"]
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=baseline["C"], max_iter=5000))
    reference.fit(_features(summary, "train").astype(np.float64), _labels(run_dir, "train"))
    for split in ("val", "test"):
        labels = _labels(run_dir, split)
        predicted = reference.predict(_features(summary, split).astype(np.float64))
        assert baseline[split]["images"] == len(labels)
        assert baseline[split]["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert summary["test"]["images"] == len(_labels(run_dir, "test"))


def test_the_keep_rule_pairs_each_phase_s_own_model_on_every_validation_photo(trained_run):
    """The per-image losses behind the keep rule come from the right models: their means
    are the validation losses each phase recorded, over all the validation photos."""
    _, run_dir = trained_run
    phases = _summary(run_dir)["phases"]
    gain = phases["2"]["val_gain"]
    assert gain["images"] == len(_labels(run_dir, "val"))
    assert gain["phase1_loss"] == pytest.approx(phases["1"]["best_val_loss"], rel=1e-4)
    assert gain["phase2_loss"] == pytest.approx(phases["2"]["best_val_loss"], rel=1e-4)
    assert gain["mean"] == pytest.approx(gain["phase1_loss"] - gain["phase2_loss"], abs=1e-9)


@pytest.mark.slow  # a whole-base phase 2 at 128 px, about 30 s
def test_a_phase_two_that_does_worse_is_not_kept(trained_run, capsys):
    """A learning rate far too high for fine-tuning the whole base: phase 2 ends worse than
    the exact head, and the run keeps (and saves) the phase-1 model."""
    from pipeline.config import with_overrides
    from pipeline.training import train

    cfg, _ = trained_run  # MobileNet 0.25 with the ImageNet fixture on flowers-mini
    cfg = with_overrides(
        cfg,
        {
            "model.fine_tune_after": "conv1_relu",
            "train.fine_tune_epochs": 1,
            "train.fine_tune_lr": 0.05,
            "train.warmup_epochs": 0,
            "train.run_name": "phase-two-worse",
        },
    )
    run_dir = Path(train(cfg).run_dir)
    summary = _summary(run_dir)
    phases = summary["phases"]
    assert phases["2"]["best_val_loss"] > phases["1"]["best_val_loss"]
    assert summary["kept_phase"] == "1"
    assert summary["final"]["val_loss"] == phases["1"]["best_val_loss"]
    assert "the phase-1 model is kept" in capsys.readouterr().out
    # The saved model is phase 1's, its head divided by the run's temperature.
    saved = keras.models.load_model(run_dir / "model.keras")
    phase_one = keras.models.clone_model(saved)
    phase_one.load_weights(run_dir / "checkpoints" / "phase1.weights.h5")
    fold_temperature(phase_one, summary["calibration"]["temperature"])
    for a, b in zip(saved.get_weights(), phase_one.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_flip_averaging_gives_a_photo_and_its_mirror_image_the_same_probabilities(
    trained_run, flowers_mini, tmp_path
):
    from PIL import Image, ImageOps

    from pipeline.predict.classifier import load_classifier

    _, run_dir = trained_run
    photo = sorted((flowers_mini / "roses").iterdir())[0]
    mirror = tmp_path / "mirror.png"
    ImageOps.mirror(Image.open(photo).convert("RGB")).save(mirror)
    original = tmp_path / "original.png"
    Image.open(photo).convert("RGB").save(original)
    clf = load_classifier(run_dir)
    plain = [r["probability"] for r in clf.classify([original, mirror], top_k=1)]
    flipped = [r["probability"] for r in clf.classify([original, mirror], top_k=1, tta="flip")]
    assert flipped[0] == pytest.approx(flipped[1], abs=1e-5)
    assert plain[0] != pytest.approx(plain[1], abs=1e-5)  # without it they differ
