"""Near-copies share a split, and exclude.txt takes photos out: the data stage on real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline.clean.stage import clean
from pipeline.config import ConfigError, load_config
from pipeline.data.manifest import SPLIT_FILES, read_manifest
from pipeline.data.near_duplicates import NEAR_DUPLICATES_REPORT, close_pairs
from pipeline.data.provenance import read_record
from pipeline.data.stage import ensure_manifests, prepare_data
from pipeline.files import read_csv
from tests.support import make_config


def splits_by_name(dataset_dir: Path) -> dict[str, str]:
    return {
        Path(r.path).name: split
        for split, name in SPLIT_FILES.items()
        for r in read_manifest(dataset_dir / name)
    }


def save_near_copy(original: Path, copy: Path) -> None:
    """Resized to 60% and re-encoded at JPEG quality 70: a different file, the same photo."""
    with Image.open(original) as img:
        small = img.convert("RGB").resize((img.width * 3 // 5, img.height * 3 // 5))
    copy.parent.mkdir(parents=True, exist_ok=True)
    small.save(copy, "JPEG", quality=70)


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory, flowers_mini):
    """The fixture flowers plus near-copies of 20 of them, one filed under another class."""
    root = tmp_path_factory.mktemp("near")
    folder = root / "photos"
    shutil.copytree(flowers_mini, folder)
    originals = sorted(folder.rglob("*.jpg"))[::20]
    copies = {}
    for original in originals:
        copy = folder / original.parent.name / f"copy_{original.name}"
        save_near_copy(original, copy)
        copies[copy.name] = original.name
    misfiled = next(folder.glob("daisy/copy_*"))
    misfiled.rename(folder / "tulips" / misfiled.name)
    result = prepare_data(make_config(root, f"folder:{folder}"), progress=False)
    return result, copies, misfiled.name


def test_near_copies_are_grouped_with_their_originals_and_share_its_split(with_copies):
    result, copies, _ = with_copies
    assert len(copies) == 20
    split = splits_by_name(result.dataset_dir)
    assert all(split[copy] == split[original] for copy, original in copies.items())
    rows = read_csv(result.dataset_dir / NEAR_DUPLICATES_REPORT)
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(Path(r["path"]).name)
    # Each group is one copy with its original: no two distinct fixture photos are grouped.
    assert sorted(map(frozenset, groups.values()), key=sorted) == sorted(
        (frozenset(pair) for pair in copies.items()), key=sorted
    )


def test_a_near_copy_filed_under_another_class_is_named_in_a_warning(with_copies):
    result, copies, moved = with_copies
    conflicts = [w for w in result.warnings if "filed under different classes" in w]
    assert len(conflicts) == 1
    assert moved in conflicts[0] and copies[moved] in conflicts[0] and "exclude.txt" in conflicts[0]


def test_distinct_fixture_photos_are_further_apart_than_the_default_threshold(flowers_mini):
    """The default threshold groups none of the fixture's own photos (checked on hashes)."""
    from pipeline.images import check_images

    checks = check_images(sorted(flowers_mini.rglob("*.jpg")), workers=1, progress=False)
    default = load_config(None, []).data.near_duplicate_bits
    assert len(checks) == 400 and all(c.phash for c in checks)
    assert close_pairs([c.phash for c in checks], default).size == 0


def test_exclude_txt_takes_a_photo_out_and_changes_the_fingerprint(tmp_path, flowers_mini):
    folder = tmp_path / "photos"
    for label in ("daisy", "roses"):
        shutil.copytree(flowers_mini / label, folder / label)
    cfg = make_config(tmp_path, f"folder:{folder}")
    first = prepare_data(cfg, progress=False)
    before = read_record(first.dataset_dir)
    victim = sorted((folder / "roses").glob("*.jpg"))[3]
    (first.dataset_dir / "exclude.txt").write_text(f"# looks like a tulip\nroses/{victim.name}\n")
    ensure_manifests(cfg)  # notices the edited exclude.txt and rebuilds
    after = read_record(first.dataset_dir)
    assert victim.name not in splits_by_name(first.dataset_dir)
    assert after.fingerprint != before.fingerprint
    report = {
        Path(r["path"]).name: r["reason"] for r in read_csv(first.dataset_dir / "check_report.csv")
    }
    assert report[victim.name] == "listed in exclude.txt"
    assert victim.is_file()  # the photo itself is untouched


def test_make_clean_keeps_the_users_exclude_txt(tmp_path, flowers_mini):
    folder = tmp_path / "photos"
    shutil.copytree(flowers_mini / "daisy", folder / "daisy")
    shutil.copytree(flowers_mini / "roses", folder / "roses")
    cfg = make_config(tmp_path, f"folder:{folder}", f"paths.models={tmp_path / 'models'}")
    dataset_dir = prepare_data(cfg, progress=False).dataset_dir
    (dataset_dir / "exclude.txt").write_text("roses/none.jpg\n")
    clean(cfg)
    assert sorted(p.name for p in dataset_dir.iterdir()) == [
        ".generated-by-pipeline",
        "exclude.txt",
    ]
    assert (dataset_dir / "exclude.txt").read_text() == "roses/none.jpg\n"


def test_near_duplicate_bits_beyond_16_is_refused():
    with pytest.raises(ConfigError, match="near_duplicate_bits must be 16 or less"):
        load_config(None, ["data.near_duplicate_bits=20"])
