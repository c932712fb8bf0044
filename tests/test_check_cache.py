"""The remembered image checks (pipeline/data/check_cache.py) on a handful of generated files:
what is reused, what is checked again, and that a damaged or outdated cache is never
trusted. The data stage end to end with the cache is in tests/test_data.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline.data import check_cache
from pipeline.data.check_cache import check_with_cache, load_cache
from pipeline.data.provenance import FileStat
from tests.imagegen import make_image

HOUR_AGO = time.time_ns() - 3600 * 1_000_000_000


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """Six files (four good, one too small at min_side 48, one empty), modified an hour ago."""
    paths = [make_image(tmp_path / "in" / f"p{i}", "rgb_jpeg", seed=i) for i in range(4)]
    paths.append(make_image(tmp_path / "in" / "small", "rgb_jpeg", width=40, height=40))
    paths.append(make_image(tmp_path / "in" / "empty", "empty"))
    for path in paths:
        os.utime(path, ns=(HOUR_AGO, HOUR_AGO))
    return paths


def run(paths: list[Path], cache: Path, **kw):
    stats = [FileStat.of(p) for p in paths]
    return check_with_cache(stats, cache, kw.pop("min_side", 32), 178_956_970, 1, False, **kw)


def test_only_new_or_changed_files_are_checked_and_removed_ones_drop_out(files, tmp_path):
    cache = tmp_path / "checks.jsonl"
    first = run(files, cache)
    assert (first.checked, first.reused) == (6, 0)
    os.utime(files[0], ns=(HOUR_AGO, HOUR_AGO + 1))  # one nanosecond later: changed
    make_image(files[1].with_suffix(".jpg"), "rgb_jpeg", seed=99)  # new content
    os.utime(files[1], ns=(HOUR_AGO, HOUR_AGO + 10**9))
    added = make_image(tmp_path / "in" / "new", "rgb_jpeg", seed=7)
    os.utime(added, ns=(HOUR_AGO, HOUR_AGO))
    now = [*files[:5], added]  # files[5] removed from the listing
    second = run(now, cache)
    assert (second.checked, second.reused) == (3, 3)
    assert [c.row() for c in second.checks] == [c.row() for c in run(now, tmp_path / "b").checks]
    assert second.checks[1].sha256 != first.checks[1].sha256
    entries, note = load_cache(cache, check_cache.cache_key(32, 178_956_970))
    assert note is None and sorted(entries) == sorted(str(p) for p in now)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # cut short
        lambda b: b.replace(b'"ok"', b'"no"', 1),  # an entry edited, still valid JSON
        lambda b: b.split(b"\n", 1)[0] + b"\n",  # the entries gone, the header kept
        lambda b: b"\x00\xff garbage",
        lambda b: b"",
    ],
    ids=["truncated", "edited", "emptied", "garbage", "empty"],
)
def test_a_damaged_cache_is_ignored_with_a_note_and_rebuilt(files, tmp_path, damage):
    cache = tmp_path / "checks.jsonl"
    first = run(files, cache)
    cache.write_bytes(damage(cache.read_bytes()))
    again = run(files, cache)
    assert again.note is not None and "checking every file" in again.note
    assert again.checked == 6 and [c.row() for c in again.checks] == [c.row() for c in first.checks]
    assert run(files, cache).reused == 6  # rebuilt whole


@pytest.mark.parametrize("setting", ["min_side", "check_version", "pillow"])
def test_a_setting_that_changes_outcomes_drops_the_whole_cache(
    files, tmp_path, setting, monkeypatch
):
    cache = tmp_path / "checks.jsonl"
    run(files, cache)
    min_side = 48 if setting == "min_side" else 32
    if setting == "check_version":
        monkeypatch.setattr(check_cache, "CHECK_VERSION", check_cache.CHECK_VERSION + 1)
    if setting == "pillow":
        import PIL

        monkeypatch.setattr(PIL, "__version__", "0.0.1")
    again = run(files, cache, min_side=min_side)
    assert again.checked == 6 and "other check settings" in (again.note or "")
    small = again.checks[4]
    assert small.status == ("skipped" if setting == "min_side" else "ok")
    if setting == "min_side":
        assert "data.min_side was 32, now 48" in again.note


def test_recheck_and_recent_files_are_checked_again(files, tmp_path):
    cache = tmp_path / "checks.jsonl"
    run(files, cache)
    assert run(files, cache, recheck=True).checked == 6
    os.utime(files[0])  # modified just now: within the clock tick a rewrite could hide in
    assert run(files, cache).checked == 1
    assert run(files, cache).checked == 0  # remembered: its content still hashes the same
    st = files[0].stat()
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, then the same mtime
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run(files, cache).checked == 1  # a racy entry whose content changed is not trusted
