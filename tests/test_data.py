"""The data stage end to end: generated good and bad files, and the real photo subsets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import load_config, with_overrides
from pipeline.data.image_cache import build_image_cache, cached_rows
from pipeline.data.manifest import SPLIT_FILES, load_split, read_classes
from pipeline.data.reports import AUGMENTED_SAMPLES, draw_data_reports
from pipeline.data.split import SPLITS
from pipeline.data.stage import CHECK_REPORT, ensure_manifests, prepare_data
from pipeline.files import read_csv
from pipeline.images import NOT_UTF8
from tests.imagegen import BAD_KINDS, GOOD_KINDS, make_image
from tests.support import make_config


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Three classes of generated photos, with every good and bad kind and some debris."""
    root = tmp_path_factory.mktemp("photos") / "my photos"
    for c, label in enumerate(("cats", "dogs", "owls")):
        for i in range(20):
            make_image(root / label / f"img{i}", "rgb_jpeg", seed=100 * c + i)
    for i, kind in enumerate(GOOD_KINDS):
        make_image(root / "dogs" / "nested" / "deeper" / kind, kind, seed=1000 + i)
    for kind in BAD_KINDS:
        make_image(root / "cats" / f"bad_{kind}", kind)
    shutil.copy(root / "cats" / "img0.jpg", root / "cats" / "img0 copy.jpg")
    shutil.copy(root / "dogs" / "img1.jpg", root / "owls" / "looks_like_an_owl.jpg")
    # A name from a system with another encoding (Latin-1 é): not UTF-8.
    shutil.copy(root / "owls" / "img2.jpg", os.fsencode(root / "owls") + b"/caf\xe9.jpg")
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dogs" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    make_image(root / "owls" / ".hidden", "rgb_jpeg")
    make_image(root / "stray", "rgb_jpeg", seed=999)
    return root


@pytest.fixture(scope="module")
def prepared(photo_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    before = snapshot(photo_folder)
    cfg = make_config(out, f"folder:{photo_folder}")
    result = prepare_data(cfg, progress=False)
    return cfg, result, before


def test_manifests_hold_every_usable_image_with_its_folder_label(prepared, photo_folder):
    _, result, _ = prepared
    classes = read_classes(result.dataset_dir / "classes.json")
    assert classes == ["cats", "dogs", "owls"]
    rows = [r for s in SPLITS for r in load_split(result.dataset_dir, s)]
    assert len(rows) == 60 + len(GOOD_KINDS) + 2  # + the two duplicates
    for row in rows:
        path = Path(row.path)
        assert path.is_file() and photo_folder in path.parents
        assert path.relative_to(photo_folder).parts[0] == row.label
        assert classes[row.label_index] == row.label
    assert sum(result.counts[c][s] for c in classes for s in SPLITS) == len(rows)


def test_check_report_lists_every_skipped_file_with_its_reason(prepared, photo_folder):
    _, result, _ = prepared
    report = {Path(r["path"]).name: r for r in read_csv(result.dataset_dir / CHECK_REPORT)}
    for kind, reason in BAD_KINDS.items():
        row = next(r for name, r in report.items() if name.startswith(f"bad_{kind}"))
        assert row["status"] == "skipped" and row["reason"].startswith(reason), kind
    assert report["stray.jpg"]["reason"] == "not inside a class folder"
    assert report["caf\\xe9.jpg"]["reason"] == NOT_UTF8  # named in UTF-8 text, escaped
    assert not any(name in report for name in (".DS_Store", "Thumbs.db", ".hidden.jpg"))
    assert sum(result.skipped.values()) == len(BAD_KINDS) + 2
    summary = json.loads((result.dataset_dir / "summary.json").read_text())
    assert len(summary["skipped"]) == len(BAD_KINDS) + 2


def test_duplicates_are_reported_and_share_a_split(prepared):
    _, result, _ = prepared
    rows = read_csv(result.dataset_dir / "duplicates.csv")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    assert len(groups) == 2
    for members in groups.values():
        assert len({m["split"] for m in members}) == 1
    assert any("different labels" in w for w in result.warnings)


def test_user_files_untouched_and_outputs_written(prepared, photo_folder):
    cfg, result, before = prepared
    assert snapshot(photo_folder) == before
    for name in ("class_distribution.png", "augmented_samples.jpg"):
        with Image.open(result.reports_dir / name) as img:
            assert img.size[0] > 300
    saved = load_config(result.dataset_dir / "config.json")
    assert saved == cfg


def test_rerun_gives_identical_manifests(prepared):
    cfg, result, _ = prepared
    first = {s: (result.dataset_dir / f"{s}.csv").read_bytes() for s in SPLITS}
    prepare_data(cfg, progress=False)
    assert first == {s: (result.dataset_dir / f"{s}.csv").read_bytes() for s in SPLITS}
    written = (result.dataset_dir / CHECK_REPORT).stat().st_mtime_ns
    ensure_manifests(cfg)  # what a later stage asks: the files are as listed, nothing rebuilt
    assert (result.dataset_dir / CHECK_REPORT).stat().st_mtime_ns == written


def test_an_incremental_run_checks_only_the_changes_and_writes_what_a_fresh_run_writes(
    photo_folder, tmp_path
):
    photos = tmp_path / "photos"
    shutil.copytree(photo_folder, photos)
    old = time.time_ns() - 3600 * 10**9  # copied long ago: outside the cache's racy window
    for path in photos.rglob("*"):
        os.utime(path, ns=(old, old))
    cfg = make_config(tmp_path / "a", f"folder:{photos}")
    first = prepare_data(cfg, progress=False)
    total = first.checked
    assert first.reused == 0 and total > 80
    figure = first.reports_dir / AUGMENTED_SAMPLES
    drawn = figure.stat().st_mtime_ns
    same = prepare_data(cfg, progress=False)
    assert (same.checked, same.reused) == (0, total)
    assert figure.stat().st_mtime_ns == drawn  # nothing it shows changed: kept
    make_image(photos / "cats" / "img3", "rgb_jpeg", seed=12345)  # new content
    os.utime(photos / "dogs" / "img4.jpg", ns=(old, old + 10**9))  # touched only
    make_image(photos / "owls" / "new", "rgb_jpeg", seed=777)
    make_image(photos / "dogs" / "new_broken", "truncated_jpeg")
    (photos / "owls" / "img5.jpg").unlink()
    again = prepare_data(cfg, progress=False)
    assert (again.checked, again.reused) == (4, total - 3)
    redrawn = figure.stat().st_mtime_ns
    assert redrawn != drawn  # the split changed: what the figures show changed
    # A cold cache in another data folder; the same reports folder, so its figures (the same
    # manifests, the same options) are kept rather than drawn a third time.
    reports = f"paths.reports={tmp_path / 'a' / 'reports'}"
    fresh = prepare_data(make_config(tmp_path / "b", f"folder:{photos}", reports), progress=False)
    assert fresh.checked == total + 1 and figure.stat().st_mtime_ns == redrawn
    outputs = [*SPLIT_FILES.values(), "classes.json", CHECK_REPORT, "duplicates.csv"]
    for name in (*outputs, "summary.json", "dataset.json"):
        assert (again.dataset_dir / name).read_bytes() == (fresh.dataset_dir / name).read_bytes()


def test_figures_are_redrawn_when_an_option_they_show_changes(prepared, tmp_path):
    cfg, result, _ = prepared
    shutil.copytree(result.reports_dir, tmp_path, dirs_exist_ok=True)  # figures and stamp
    rows, counts = load_split(result.dataset_dir, "train"), result.counts
    figure = tmp_path / AUGMENTED_SAMPLES
    drawn = figure.stat().st_mtime_ns
    draw_data_reports(cfg, result.dataset_dir, tmp_path, counts, rows, result.classes)
    assert figure.stat().st_mtime_ns == drawn
    flipless = with_overrides(cfg, {"input.flip": False})
    draw_data_reports(flipless, result.dataset_dir, tmp_path, counts, rows, result.classes)
    assert figure.stat().st_mtime_ns != drawn


def test_one_class_and_starved_class_stop_with_clear_errors(tmp_path):
    root = tmp_path / "one"
    for i in range(12):
        make_image(root / "only" / f"{i}", "rgb_jpeg", seed=i)
    make_image(root / "empty_class" / "bad", "empty")
    with pytest.raises(ValueError, match=r"Found 1 class\(es\) \(only\)"):
        prepare_data(make_config(tmp_path, f"folder:{root}"), progress=False)
    make_image(root / "rare" / "0", "rgb_jpeg", seed=50)
    with pytest.raises(ValueError, match="Class 'rare' has 1 usable image"):
        prepare_data(make_config(tmp_path, f"folder:{root}"), progress=False)


def test_decoded_cache_is_built_once_and_used(prepared):
    _, result, _ = prepared
    rows = load_split(result.dataset_dir, "train")
    folder = build_image_cache(rows, result.dataset_dir, size=40, workers=1)
    cached = cached_rows(rows, result.dataset_dir, 40)
    for row, original in zip(cached, rows):
        with Image.open(row.path) as img:
            assert min(img.size) == 40 and img.format == "JPEG"
            assert img.size[0] / img.size[1] == pytest.approx(
                original.width / original.height, abs=0.05
            )
        assert row.orientation == 1 and row.decoder == "jpeg"
    mtimes = [p.stat().st_mtime_ns for p in sorted(folder.rglob("*.jpg"))]
    build_image_cache(rows, result.dataset_dir, size=40, workers=1)
    assert mtimes == [p.stat().st_mtime_ns for p in sorted(folder.rglob("*.jpg"))]
    with pytest.raises(FileNotFoundError, match="DATA_CACHE=41"):
        cached_rows(rows, result.dataset_dir, 41)


def test_flowers_mini_real_photos(flowers_prepared):
    _, result = flowers_prepared
    assert result.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert result.skipped == {}
    assert all(sum(c.values()) == 80 for c in result.counts.values())
    totals = {s: sum(c[s] for c in result.counts.values()) for s in SPLITS}
    assert totals["train"] > 250 and totals["val"] > 35 and totals["test"] > 35


def test_intel_mini_keeps_its_own_test_set(tmp_path, intel_mini):
    cfg = make_config(tmp_path, f"folder:{intel_mini}", "data.val_fraction=0.15")
    result = prepare_data(cfg, progress=False)
    test_rows = load_split(result.dataset_dir, "test")
    assert len(test_rows) == 6 * 8 and all("seg_test" in r.path for r in test_rows)
    train_val = load_split(result.dataset_dir, "train") + load_split(result.dataset_dir, "val")
    assert len(train_val) == 6 * 20 and all("seg_train" in r.path for r in train_val)
    summary = json.loads((result.dataset_dir / "summary.json").read_text())
    assert summary["unlabelled_dir"].endswith("seg_pred/seg_pred")
