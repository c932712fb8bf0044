"""Prediction: the CSV equals the model's own output; bad files are listed, never fatal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import with_overrides
from pipeline.files import read_csv
from pipeline.images import check_image
from pipeline.inputs import build_eval_dataset
from pipeline.predict import load_classifier, predict, rows_from_checks
from tests.imagegen import make_image
from tests.support import REPO


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, flowers_mini):
    root = tmp_path_factory.mktemp("to_classify") / "new photos"
    for i, class_dir in enumerate(sorted(flowers_mini.iterdir())):
        for photo in sorted(class_dir.iterdir())[-2:]:
            target = root / ("nested/deeper" if i % 2 else "") / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
    make_image(root / "broken", "truncated_jpeg")
    make_image(root / "empty", "empty")
    (root / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def predicted(trained_run, photo_folder, tmp_path_factory):
    cfg, run_dir = trained_run
    out = tmp_path_factory.mktemp("pred")
    cfg = with_overrides(
        cfg,
        {
            "eval.run": str(run_dir),
            "predict.input": str(photo_folder),
            "predict.output": str(out / "predictions.csv"),
            "predict.sort_into": str(out / "sorted"),
        },
    )
    return cfg, predict(cfg), read_csv(out / "predictions.csv")


def test_csv_equals_the_models_own_output(predicted, trained_run):
    _, result, rows = predicted
    _, run_dir = trained_run
    assert result.classified == 10 and result.skipped == 3
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    clf = load_classifier(run_dir)
    checks = [check_image(r["path"]) for r in ok]
    images = np.concatenate(
        [b.numpy() for b in build_eval_dataset(rows_from_checks(checks), clf.cfg)]
    )
    expected = clf.model(images, training=False).numpy()
    for row, probs in zip(ok, expected):
        assert row["predicted"] == clf.labels[int(probs.argmax())]
        assert float(row["probability"]) == pytest.approx(float(probs.max()), abs=1e-5)
        top = [float(row[f"top{i}_probability"]) for i in (1, 2, 3)]
        assert top == sorted(top, reverse=True)
        assert row["top1_label"] == row["predicted"]


def test_bad_files_are_listed_with_reasons(predicted):
    _, _, rows = predicted
    bad = {r["path"].rsplit("/", 1)[-1]: r for r in rows if r["status"] != "ok"}
    assert bad["broken.jpg"]["reason"].startswith("truncated or corrupt")
    assert bad["empty.jpg"]["reason"] == "empty file"
    assert bad["notes.txt"]["reason"].startswith("unsupported extension")
    assert all(r["predicted"] == "" for r in bad.values())


def test_sort_into_copies_and_never_moves(predicted, photo_folder):
    _, result, rows = predicted
    copies = sorted(p for p in result.sorted_into.rglob("*") if p.is_file())
    assert len(copies) == 10
    for row in (r for r in rows if r["status"] == "ok"):
        source = Path(row["path"])
        assert source.is_file()  # the original is still there
        copy = result.sorted_into / row["predicted"] / source.name
        assert copy.read_bytes() == source.read_bytes()


def test_api_returns_the_same_rows(predicted, trained_run, photo_folder):
    _, _, rows = predicted
    _, run_dir = trained_run
    clf = load_classifier(run_dir.name, run_dir.parent)
    api = clf.classify(sorted(r["path"] for r in rows))
    assert [a["path"] for a in api] == [r["path"] for r in rows]
    for a, r in zip(api, rows):
        assert a["status"] == r["status"] and a.get("predicted", "") == r["predicted"]


def test_missing_empty_and_imageless_folders_are_clear_errors(trained_run, tmp_path):
    cfg, run_dir = trained_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    for folder, message in (
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "empty", "no images found"),
        (tmp_path / "docs", "no images found"),
    ):
        bad = with_overrides(cfg, {"eval.run": str(run_dir), "predict.input": str(folder)})
        with pytest.raises((FileNotFoundError, ValueError), match=message):
            predict(bad)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            f"predict.input={tmp_path / 'nope'}",
            f"paths.models={run_dir.parent}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no such folder" in result.stderr
