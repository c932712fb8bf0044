"""`make review` on real photos: misfiled photos rise to the top, a clean folder is left
almost unflagged, and nothing of the user's is changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.split import split_of
from pipeline.files import read_csv
from pipeline.images import file_sha256
from pipeline.review.stage import LABEL_ISSUES_CSV, REPORT_FILE, review

MISFILED = 20  # 5% of the 400 fixture photos


def review_config(root: Path, photos: Path, weights: Path, *extra: str):
    """MobileNet 0.25 with its ImageNet weights at its own 224 px: the fixture's real weights."""
    return load_config(
        None,
        [
            f"data.dataset=folder:{photos}",
            f"paths.data={root / 'data'}",
            f"paths.reports={root / 'reports'}",
            "model.backbone=mobilenet",
            "model.alpha=0.25",
            f"model.weights={weights}",
            "input.image_size=224",
            *extra,
        ],
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def misfile(photos: Path, count: int, seed: int = 42) -> list[Path]:
    """Move ``count`` training or validation photos (the split follows content, so moving
    keeps it) into the next class's folder; return their new paths."""
    classes = sorted(p.name for p in photos.iterdir() if p.is_dir())
    candidates = [
        p
        for p in sorted(photos.rglob("*.jpg"))
        if split_of(file_sha256(p), seed, 0.15, 0.15) != "test"
    ]
    moved = []
    for path in candidates[:: len(candidates) // count][:count]:
        wrong = classes[(classes.index(path.parent.name) + 1) % len(classes)]
        target = photos / wrong / path.name
        shutil.move(path, target)
        moved.append(target)
    return moved


@pytest.fixture(scope="module")
def misfiled_review(tmp_path_factory, flowers_mini, mobilenet_weights):
    root = tmp_path_factory.mktemp("review-misfiled")
    photos = root / "photos"
    shutil.copytree(flowers_mini, photos)
    moved = misfile(photos, MISFILED)
    before = snapshot(photos)
    result = review(review_config(root, photos, mobilenet_weights))
    return result, moved, before, photos


def test_misfiled_photos_are_among_the_top_40_suspects(misfiled_review):
    result, moved, _, _ = misfiled_review
    top = set(result.suspects[:40])
    found = [p for p in moved if str(p) in top]
    assert len(found) >= 0.7 * MISFILED, (len(found), result.suspects[:40])


def test_review_leaves_the_photos_untouched_and_writes_its_report(misfiled_review):
    result, _, before, photos = misfiled_review
    assert snapshot(photos) == before
    ranked = read_csv(result.out_dir / LABEL_ISSUES_CSV)
    assert len(ranked) == len(result.suspects) and ranked[0]["path"] == result.suspects[0]
    assert {r["split"] for r in ranked} == {"train", "val"}
    page = (result.out_dir / REPORT_FILE).read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 40


@pytest.mark.slow  # a third data stage and review: about 25 s on 2 cores
def test_an_unmodified_folder_has_fewer_than_10_photos_flagged(
    tmp_path, flowers_mini, mobilenet_weights
):
    result = review(review_config(tmp_path, flowers_mini, mobilenet_weights))
    assert result.label_issues < 10


def test_review_refuses_random_weights(tmp_path, flowers_mini):
    cfg = review_config(tmp_path, flowers_mini, Path("none"), "model.weights=none")
    with pytest.raises(ConfigError, match="WEIGHTS=imagenet"):
        review(cfg)
    assert not os.path.exists(tmp_path / "data")


@pytest.mark.slow  # a review and an evaluation of the shared run: about 30 s on 2 cores
def test_a_runs_report_links_to_its_data_sets_review(trained_run):
    from pipeline.config import with_overrides
    from pipeline.evaluate.stage import evaluate

    cfg, run_dir = trained_run
    cfg = with_overrides(cfg, {"eval.run": run_dir.name, "eval.split": "val"})
    made = review(cfg)
    page = (evaluate(cfg).report_dir / REPORT_FILE).read_text(encoding="utf-8")
    link = os.path.relpath(made.out_dir / REPORT_FILE, Path(cfg.paths.reports) / run_dir.name)
    assert f'href="{link}"' in page
