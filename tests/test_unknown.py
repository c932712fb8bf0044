"""Photos that fit no class (pipeline.predict.unknown): the detector, and what a flowers
run makes of scene photos, through the classifier API and `make predict`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config, with_overrides
from pipeline.data.provenance import load_run_data
from pipeline.files import read_csv
from pipeline.predict.classifier import Classifier, load_classifier
from pipeline.predict.stage import predict
from pipeline.predict.unknown import (
    UNKNOWN_COLUMNS,
    UNKNOWN_FILE,
    fit_detector,
    load_detector,
    save_detector,
)
from pipeline.validation import ConfigError


def _scene_photos(intel_mini: Path) -> list[Path]:
    """The fixture's labelled scene photos (seg_train and seg_test: 168)."""
    return sorted(p for p in intel_mini.rglob("*.jpg") if "seg_pred" not in p.parts)


def _flagged(rows: list[dict]) -> float:
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["unknown"] in ("true", "false") for r in ok)
    return sum(r["unknown"] == "true" for r in ok) / len(ok)


def test_a_flowers_run_flags_most_scene_photos_as_unknown(trained_run, intel_mini):
    """Issue 27: a flowers run flags at least 80% of the fixture scene photos as unknown."""
    _, run_dir = trained_run
    rows = load_classifier(run_dir).classify(_scene_photos(intel_mini))
    assert len(rows) == 168
    assert _flagged(rows) >= 0.8


def test_a_flowers_run_flags_few_of_its_own_test_photos(trained_run):
    """Issue 27: ... and at most 10% of its own test photos."""
    _, run_dir = trained_run
    test_rows = load_run_data(run_dir).rows("test")
    rows = load_classifier(run_dir).classify([r.path for r in test_rows])
    assert len(rows) == len(test_rows) > 40
    assert _flagged(rows) <= 0.1


def test_threshold_follows_the_rate_on_the_stored_validation_scores(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
    detector = fit_detector(train, val, rate=0.05)
    assert detector.k == 10 and np.mean(detector.flags(detector.val_scores)) == pytest.approx(0.05)
    looser = detector.with_rate(0.2)
    assert looser.threshold < detector.threshold
    assert np.mean(looser.flags(looser.val_scores)) == pytest.approx(0.2)
    assert fit_detector(train[:4], val, rate=0.05).k == 4  # fewer photos than k
    again = load_detector(save_detector(tmp_path / UNKNOWN_FILE, detector).parent)
    assert (again.k, again.rate, again.threshold) == (10, 0.05, detector.threshold)
    np.testing.assert_allclose(again.scores(val[:5]), detector.scores(val[:5]))
    with pytest.raises(ValueError, match="needs training and validation photos"):
        fit_detector(train, val[:0], rate=0.05)


def test_unknown_rate_out_of_range_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"predict.unknown_rate must be in \[0, 1\)"):
        load_config(None, ["predict.unknown_rate=1.5"])


def _photos(tmp_path: Path, flowers_mini: Path, intel_mini: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for photo in sorted(flowers_mini.glob("tulips/*.jpg"))[:3]:
        shutil.copy(photo, folder / f"flower-{photo.name}")
    for photo in _scene_photos(intel_mini)[:3]:
        shutil.copy(photo, folder / f"scene-{photo.name}")
    return folder


def _predict(trained_run, run: Path, folder: Path, out: Path, **extra) -> list[dict]:
    cfg, _ = trained_run
    options = {"eval.run": str(run), "predict.input": str(folder), "predict.output": str(out)}
    predict(with_overrides(cfg, {**options, **extra}))
    return read_csv(out)


def test_predict_csv_has_the_unknown_columns(trained_run, flowers_mini, intel_mini, tmp_path):
    _, run_dir = trained_run
    folder = _photos(tmp_path, flowers_mini, intel_mini)
    rows = _predict(trained_run, run_dir, folder, tmp_path / "out.csv")
    header = list(rows[0])
    assert header[-3:] == [*UNKNOWN_COLUMNS, "reason"]
    api = {r["path"]: r for r in load_classifier(run_dir).classify(sorted(folder.iterdir()))}
    for row in rows:  # the streamed CSV agrees with the API, photo for photo
        assert float(row["unknown_score"]) == pytest.approx(
            api[row["path"]]["unknown_score"], abs=1e-5
        )
        assert row["unknown"] == api[row["path"]]["unknown"]
    scores = {Path(r["path"]).name.split("-")[0]: float(r["unknown_score"]) for r in rows}
    assert scores["scene"] > 0 and scores["flower"] >= 0


def test_another_rate_at_predict_time_recomputes_the_threshold(
    trained_run, flowers_mini, intel_mini, tmp_path, capsys
):
    _, run_dir = trained_run
    folder = _photos(tmp_path, flowers_mini, intel_mini)
    rows = _predict(
        trained_run, run_dir, folder, tmp_path / "out.csv", **{"predict.unknown_rate": 0.99}
    )
    assert "predict.unknown_rate=0.99 differs from the run's 0.05" in capsys.readouterr().out
    assert _flagged(rows) == 1.0  # a threshold below 99% of validation: every photo here


def test_a_run_without_a_detector_leaves_the_columns_empty_and_says_why(
    trained_run, flowers_mini, intel_mini, tmp_path, capsys
):
    """A run trained before the detector existed (no ood.npz) still predicts."""
    _, run_dir = trained_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns(UNKNOWN_FILE, "checkpoints"))
    folder = _photos(tmp_path, flowers_mini, intel_mini)
    rows = _predict(trained_run, old, folder, tmp_path / "out.csv")
    out = capsys.readouterr().out
    assert f"left empty: old-run has no {UNKNOWN_FILE}" in out
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert all(r[c] == "" for r in rows for c in UNKNOWN_COLUMNS)


def test_a_file_exported_without_the_unknown_output_says_why_its_columns_are_empty(
    trained_run, tmp_path
):
    """A .tflite file of one output (exported before files carried unknown_score) from a
    run that has a detector: the columns stay empty and the note says to export again."""
    import keras
    import tensorflow as tf

    from pipeline.predict.tflite import TFLiteModel

    cfg, run_dir = trained_run
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    single = TFLiteModel(path)
    assert not single.has_unknown
    exported = Classifier(run_dir, cfg, ["a", "b"], single, single, raw_pixels=True)
    assert exported.predict_scored(np.zeros((1, 8, 8, 3)))[1] is None
    reason = exported.without_unknown_reason()
    assert f"{path} has no unknown_score output" in reason
    assert f"make export RUN={run_dir.name}" in reason
