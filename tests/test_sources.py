"""Sources: local folders and archives win, hostile archives are refused, errors say what to do."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.data.sources import (
    FLOWERS_ARCHIVE,
    SourceError,
    flowers_source,
    intel_source,
    resolve_source,
    safe_extract,
)


def _tar_add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil-abs.txt", "a/../../evil.txt"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_hostile_archive_writes_nothing_outside(tmp_path, member, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = outside / f"hostile.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ok/fine.txt", "fine")
            zf.writestr(member, "evil")
    else:
        with tarfile.open(archive, "w") as tf:
            _tar_add_bytes(tf, "ok/fine.txt", b"fine")
            _tar_add_bytes(tf, member, b"evil")
    target = outside / "work" / "extracted"
    with pytest.raises(SourceError, match="outside the extraction folder"):
        safe_extract(archive, target)
    files = sorted(p for p in tmp_path.rglob("*") if not p.is_dir())
    assert files == [archive]  # nothing written anywhere, no partial extraction left
    assert not target.exists()
    assert not Path("/tmp/evil-abs.txt").exists()


def test_links_in_archives_are_not_recreated(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        _tar_add_bytes(tf, "cls/a.txt", b"a")
        link = tarfile.TarInfo("cls/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "cls" / "a.txt").read_bytes() == b"a"
    assert not (target / "cls" / "escape").exists()
    assert not (target / "cls" / "escape").is_symlink()


def test_interrupted_extraction_never_looks_finished(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for i in range(20):
            zf.writestr(f"c/{i}.txt", "x" * 5000)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(SourceError, match="not a readable archive"):
        safe_extract(broken, tmp_path / "out")
    assert sorted(tmp_path.iterdir()) == sorted([good, broken])


def _subset_tgz(flowers_mini: Path, archive: Path, per_class: int = 3) -> None:
    with tarfile.open(archive, "w:gz") as tf:
        for class_dir in sorted(flowers_mini.iterdir()):
            for photo in sorted(class_dir.iterdir())[:per_class]:
                tf.add(photo, f"flower_photos/{class_dir.name}/{photo.name}")
        _tar_add_bytes(tf, "flower_photos/LICENSE.txt", b"CC-BY")


def test_flowers_from_a_hand_placed_archive(tmp_path, flowers_mini):
    _subset_tgz(flowers_mini, tmp_path / FLOWERS_ARCHIVE)
    source = flowers_source(tmp_path, tmp_path / "flowers", url="http://127.0.0.1:9/never-used.tgz")
    root = source.roots[0][0]
    assert root == tmp_path / "flowers" / "extracted" / "flower_photos"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        p.name for p in flowers_mini.iterdir()
    )
    again = flowers_source(
        tmp_path, tmp_path / "flowers"
    )  # extracted copy reused, archive not read again
    assert again.roots[0][0] == root


def test_flowers_extracted_folder_is_used_in_place(tmp_path, flowers_mini):
    (tmp_path / "flower_photos").symlink_to(flowers_mini, target_is_directory=True)
    source = flowers_source(tmp_path, tmp_path / "flowers", url="http://127.0.0.1:9/never-used.tgz")
    assert source.roots == [(tmp_path / "flower_photos", None)]


def test_flowers_offline_error_names_url_file_and_place(tmp_path):
    url = "http://127.0.0.1:9/flower_photos.tgz"  # port 9 refuses at once: a real failure
    with pytest.raises(SourceError) as info:
        flowers_source(tmp_path, tmp_path / "flowers", url=url)
    message = str(info.value)
    assert url in message and str(tmp_path / FLOWERS_ARCHIVE) in message
    assert "flower_photos/" in message and "\n" not in message


def test_intel_from_kaggle_archive_with_its_nesting(tmp_path, intel_mini):
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as zf:
        for path in sorted(intel_mini.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(intel_mini).as_posix())
    source = intel_source(tmp_path, tmp_path / "intel")
    (train, given_train), (test, given_test) = source.roots
    assert train.parts[-2:] == ("seg_train", "seg_train") and given_train is None
    assert test.parts[-2:] == ("seg_test", "seg_test") and given_test == "test"
    assert source.unlabelled is not None and source.unlabelled.parts[-2:] == (
        "seg_pred",
        "seg_pred",
    )


def test_intel_flattened_layout_and_missing_error(tmp_path, intel_mini):
    with pytest.raises(SourceError, match="kaggle datasets download -d"):
        intel_source(tmp_path, tmp_path / "intel")
    flat = tmp_path / "intel-image-classification"
    for split in ("seg_train", "seg_test"):
        (flat / split).mkdir(parents=True)
        for class_dir in (intel_mini / split / split).iterdir():
            (flat / split / class_dir.name).symlink_to(class_dir, target_is_directory=True)
    source = intel_source(tmp_path, tmp_path / "intel")
    assert [root for root, _ in source.roots] == [flat / "seg_train", flat / "seg_test"]
    assert source.unlabelled is None


def test_folder_source_accepts_folders_archives_and_rejects_missing(tmp_path, flowers_mini):
    source = resolve_source(f"folder:{flowers_mini}", tmp_path, tmp_path / "flowers-mini")
    assert source.roots == [(flowers_mini, None)]
    _subset_tgz(flowers_mini, tmp_path / "photos.tgz", per_class=1)
    from_archive = resolve_source(
        f"folder:{tmp_path / 'photos.tgz'}", tmp_path / "d", tmp_path / "d" / "photos"
    )
    assert from_archive.roots[0][0].name == "flower_photos"
    with pytest.raises(SourceError, match="no such folder or archive"):
        resolve_source(f"folder:{tmp_path / 'nope'}", tmp_path, tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="no class subfolders"):
        resolve_source(f"folder:{flat}", tmp_path, tmp_path / "flat")
