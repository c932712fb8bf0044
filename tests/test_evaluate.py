"""Evaluation: numbers that agree with each other, every artefact, and the report in a browser."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from pipeline.config import with_overrides
from pipeline.data.manifest import load_split
from pipeline.evaluate.metrics import classification_metrics, reliability, worst_mistakes
from pipeline.evaluate.stage import evaluate
from pipeline.files import read_csv
from pipeline.runs import resolve_run
from pipeline.summary import read_summary


def random_probs(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y] * rng.uniform(0, 1, (n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_a_missing_run_is_named_once_whether_relative_or_absolute(tmp_path):
    models = tmp_path / "models"
    with pytest.raises(FileNotFoundError) as absolute:
        resolve_run(models, str(tmp_path / "gone"))
    assert f"no model.keras in {tmp_path / 'gone'};" in str(absolute.value)
    with pytest.raises(FileNotFoundError) as relative:
        resolve_run(models, "gone")
    assert f"no model.keras in gone or {models / 'gone'};" in str(relative.value)


def test_metrics_agree_with_each_other():
    y, probs = random_probs(300, 6)
    m = classification_metrics(y, probs, [f"c{i}" for i in range(6)], top_k=3)
    confusion = np.array(m["confusion"])
    assert confusion.sum() == 300 == m["images"]
    assert np.trace(confusion) / 300 == pytest.approx(m["accuracy"])
    per = m["per_class"]
    np.testing.assert_array_equal([c["support"] for c in per], confusion.sum(axis=1))
    recall = np.diag(confusion) / confusion.sum(axis=1)
    precision = np.diag(confusion) / confusion.sum(axis=0)
    np.testing.assert_allclose([c["recall"] for c in per], recall)
    np.testing.assert_allclose([c["precision"] for c in per], precision)
    np.testing.assert_allclose(np.array(m["confusion_normalised"]).sum(axis=1), 1.0)
    assert m["accuracy"] <= m["top_3_accuracy"] <= 1.0
    assert m["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(300), y])))
    bins = reliability(y, probs)["bins"]
    assert sum(b["count"] for b in bins) == 300
    manual_ece = sum(
        b["count"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]
    )
    assert m["expected_calibration_error"] == pytest.approx(manual_ece)
    worst = worst_mistakes(y, probs, 5)
    confidences = [probs[i].max() for i in worst]
    assert confidences == sorted(confidences, reverse=True)
    assert all(probs[i].argmax() != y[i] for i in worst)


def test_class_without_test_images_has_no_auc():
    y, probs = random_probs(50, 3)
    y[y == 2] = 0
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"][2]["roc_auc"] is None and m["per_class"][2]["support"] == 0


@pytest.fixture(scope="module")
def evaluated(trained_run, intel_mini):
    cfg, run_dir = trained_run
    cfg = with_overrides(cfg, {"eval.run": run_dir.name, "eval.unknown_photos": str(intel_mini)})
    return cfg, evaluate(cfg)


def test_every_artefact_exists_and_agrees(evaluated):
    cfg, result = evaluated
    out = result.report_dir
    for name in (
        "metrics.json",
        "per_class.csv",
        "per_class.md",
        "confusion_counts.csv",
        "confusion_normalised.csv",
        "confusion_counts.png",
        "confusion_normalised.png",
        "roc.png",
        "precision_recall.png",
        "reliability.png",
        "predictions.csv",
        "index.html",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    # Photo grids are JPEG, and so is what the self-contained report embeds of them.
    assert (out / "mistakes.jpg").is_file() == bool(metrics["worst_mistakes"])
    assert (out / "confused_pairs.jpg").is_file() == bool(metrics["confused_pairs"])
    assert not list(out.glob("mistakes.png")) and not list(out.glob("confused_pairs.png"))
    figures = result.figures  # what the report embedded: the files on disk
    assert figures.roc == out / "roc.png" and figures.pr == out / "precision_recall.png"
    assert (figures.mistakes is not None) == bool(metrics["worst_mistakes"])
    assert all(result.files[name] == path for name, path in figures.files().items())
    assert (out / "index.html").stat().st_size < 2_000_000
    test_rows = load_split(cfg.dataset_dir(), "test")
    confusion = np.array(metrics["confusion"])
    assert confusion.sum() == len(test_rows) == metrics["images"]
    predictions = read_csv(out / "predictions.csv")
    assert [p["path"] for p in predictions] == [r.path for r in test_rows]
    accuracy = np.mean([int(p["correct"]) for p in predictions])
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["accuracy"])
    counts_csv = [
        [int(v) for v in list(r.values())[1:]] for r in read_csv(out / "confusion_counts.csv")
    ]
    assert counts_csv == metrics["confusion"]
    per_class = read_csv(out / "per_class.csv")
    assert [float(r["f1"]) for r in per_class] == pytest.approx(
        [c["f1"] for c in metrics["per_class"]]
    )
    assert "memory" in metrics and "error" not in metrics["memory"]


def test_html_report_renders_in_a_real_browser(evaluated, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run should have installed it")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    _, result = evaluated
    metrics = json.loads((result.report_dir / "metrics.json").read_text())
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((result.report_dir / "index.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])"
        )
        shown = page.eval_on_selector_all(
            "[data-metric]", "els => els.map(e => [e.dataset.metric, e.textContent])"
        )
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 8 and all(ok for _, ok in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests)  # self-contained
    per_class_values = sum(
        4 + (c["roc_auc"] is not None) + (c["average_precision"] is not None)
        for c in metrics["per_class"]
    )
    baseline_values = 2 if metrics["baseline"] else 0  # its accuracy and macro-F1
    calibration_values = 3 if metrics["calibration"] else 0  # T, ECE before and after
    unknown = metrics["unknown"]  # threshold, split flagged; other flagged and AUROC
    unknown_values = (2 + 2 * bool(unknown["other_photos"])) if unknown else 0
    extra = baseline_values + calibration_values + unknown_values
    assert len(shown) == 6 + per_class_values + extra  # cards, tables
    for key, text in shown:
        value = metrics
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert float(text) == pytest.approx(value, abs=6e-5), key


def test_the_report_says_what_fine_tuning_added_over_frozen_features(evaluated):
    """evaluate scores the same test photos the train stage scored the baseline on: the
    model's accuracy there equals the train summary's, and the difference is reported."""
    cfg, result = evaluated
    summary = read_summary(cfg.paths.models + "/" + result.metrics["run"])
    baseline = result.metrics["baseline"]
    assert baseline["accuracy"] == summary.baseline.test.accuracy
    assert result.metrics["accuracy"] == pytest.approx(summary.test.accuracy, abs=1e-6)
    points = 100 * (result.metrics["accuracy"] - baseline["accuracy"])
    assert baseline["accuracy_points_over_baseline"] == pytest.approx(points)
    html = (result.report_dir / "index.html").read_text()
    assert f"Fine-tuning adds <b>{points:+.1f} points</b>" in html
    assert f'data-metric="baseline.accuracy" data-value="{baseline["accuracy"]!r}"' in html


def test_the_report_gives_calibration_and_unknown_photo_figures(evaluated, trained_run, intel_mini):
    """ECE before and after the run's temperature on the split, and how unknown_score tells
    the split's flowers from the fixture's scene photos (eval.unknown_photos)."""
    _, result = evaluated
    _, run_dir = trained_run
    metrics = json.loads((result.report_dir / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] == read_summary(run_dir).calibration.temperature
    assert calibration["ece_after"] == metrics["expected_calibration_error"]
    assert len(calibration["reliability_before"]) == 15
    assert (result.report_dir / "reliability_uncalibrated.png").is_file()
    unknown = metrics["unknown"]
    assert unknown["other_photos"] == str(intel_mini) and unknown["other_images"] == 178
    assert unknown["split_images"] == metrics["images"]
    assert unknown["auroc"] > 0.9 and unknown["other_flagged"] >= 0.8
    assert unknown["split_flagged"] <= 0.1
    html = (result.report_dir / "index.html").read_text()
    assert f'data-metric="unknown.auroc" data-value="{unknown["auroc"]!r}"' in html
    assert "Temperature scaling: T = " in html


def test_a_run_trained_before_calibration_is_reported_not_calibrated(trained_run, tmp_path):
    cfg, run_dir = trained_run
    old = tmp_path / "models" / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("ood.npz", "checkpoints"))
    summary = json.loads((old / "summary.json").read_text())
    del summary["calibration"], summary["unknown"]
    (old / "summary.json").write_text(json.dumps(summary))
    cfg = with_overrides(
        cfg,
        {
            "eval.run": "old-run",
            "paths.models": str(tmp_path / "models"),
            "paths.reports": str(tmp_path / "reports"),
            "eval.gallery_size": 0,
        },
    )
    result = evaluate(cfg)
    assert result.metrics["calibration"] is None and result.metrics["unknown"] is None
    assert result.figures.reliability_uncalibrated is None
    html = (result.report_dir / "index.html").read_text()
    assert "Not calibrated (a run trained before temperature scaling)" in html
    assert "No unknown-photo detector" in html
