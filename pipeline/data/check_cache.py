"""Remembered image checks: `make data` re-checks only the files that are new or changed.

Each data set's folder keeps ``checks.jsonl``: every listed file's check result
(``pipeline.images.ImageCheck``, its sha256 included, so duplicates are still found),
keyed by the path as listed, the byte size and the modification time in nanoseconds. A
file whose size and mtime are those remembered is not opened again; any other file is
checked afresh, and files no longer listed drop out when the cache is rewritten.

What it trusts: a file rewritten with the same byte size *and* the same modification time
(to the nanosecond the file system keeps) is taken as unchanged. Editors, cameras, copies
and ``touch`` all move the mtime; what does not is a tool that restores an old mtime on
purpose (``touch -r``, ``cp -p``/``rsync -t`` over a file of the same size). Against a
rewrite within the same clock tick as the check, a file modified in the last
``RACY_SECONDS`` before the cache is written is remembered as *racy*: next time its size
and mtime are not enough, its content must still hash to the remembered sha256 (git's
index does the same), so a folder copied just before `make data` is not decoded again.
Force a full re-check with ``data.recheck=true`` (``make data RECHECK=1``) or by deleting
the file.

The whole cache is dropped when anything that can change a check's outcome differs:
``data.min_side``, ``data.max_pixels``, ``CHECK_VERSION`` (bumped with ``check_image``),
Pillow's version and ImageCheck's columns. A damaged or unreadable cache is ignored with
a one-line note and rebuilt: its header carries the sha256 and row count of its body, so
a truncated or edited file is noticed rather than half-trusted.

Why JSON lines, not SQLite or CSV: the cache is rewritten whole and atomically on every run
(``pipeline.files``; 20,000 entries are 4.4 MB, written or read in under a second on 2 busy
cores, a small part of a rerun), so SQLite's in-place updates buy nothing and would bring
journal side files and partial-write states; a header line holding the key and digest is
natural in JSON lines and awkward in CSV, and JSON keeps each field's type (int stays int)
without a schema.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.provenance import FileStat
from pipeline.files import atomic_write_bytes
from pipeline.images import CHECK_VERSION, ImageCheck, check_images, file_sha256

CACHE_FILE = "checks.jsonl"
FORMAT = 2  # the layout of this file; bump when it changes
RACY_SECONDS = 2  # FAT keeps mtimes to 2 s; other file systems finer
_TYPES = [type(v) for v in ImageCheck(path="").row()]  # str, ..., int, int, int, str


def cache_key(min_side: int, max_pixels: int) -> dict[str, Any]:
    """Everything that can change a check's outcome: when it differs, nothing is reused."""
    import PIL

    return {
        "format": FORMAT,
        "check_version": CHECK_VERSION,
        "columns": ImageCheck.columns(),
        "min_side": min_side,
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,
    }


Entries = dict[str, tuple[int, int, bool, ImageCheck]]  # path -> (size, mtime_ns, racy, check)


def load_cache(path: Path, key: dict[str, Any]) -> tuple[Entries, str | None]:
    """The remembered checks, and a note when some existed but cannot be used (else None)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"{path} is unreadable ({exc.strerror or exc}): checking every file"
    try:
        head, _, body = data.partition(b"\n")
        header = json.loads(head)
        if header.get("key") != key:
            changed = _describe(header.get("key"), key)
            return {}, f"{path} was made with other check settings ({changed}): checking every file"
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise ValueError("its content does not match its recorded digest")
        entries: Entries = {}
        # One parse of all lines as one array: 20,000 json.loads calls cost several times more.
        # (A line never holds a raw newline: JSON escapes those inside strings.)
        rows = json.loads(b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]") if body else []
        for size, mtime_ns, racy, *row in rows:
            if type(size) is not int or type(mtime_ns) is not int or type(racy) is not bool:
                raise ValueError("an entry without an integer size and mtime")
            if [type(v) for v in row] != _TYPES:
                raise ValueError("an entry with fields of the wrong type")
            check = ImageCheck(*row)
            entries[check.path] = (size, mtime_ns, racy, check)
        if len(entries) != header["rows"]:
            raise ValueError(f"{len(entries)} entries for {header['rows']} recorded")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError too
        return {}, f"{path} is damaged ({exc}); ignoring it and checking every file"
    return entries, None


def save_cache(
    path: Path, key: dict[str, Any], stats: Sequence[FileStat], checks: Sequence[ImageCheck]
) -> Path:
    """Write the checks of exactly these files (atomically); very recent ones marked racy."""
    recent = time.time_ns() - RACY_SECONDS * 1_000_000_000
    # ASCII JSON: a path that is not valid UTF-8 (surrogate escapes) round-trips as \udcxx.
    body = "".join(
        json.dumps([s.size, s.mtime_ns, s.mtime_ns >= recent, *c.row()]) + "\n"
        for s, c in zip(stats, checks)
    ).encode()
    header = {"key": key, "rows": len(checks), "sha256": hashlib.sha256(body).hexdigest()}
    return atomic_write_bytes(path, json.dumps(header).encode("utf-8") + b"\n" + body)


@dataclass
class CheckedFiles:
    """The check of every listed file, in listing order, and how many were done afresh."""

    checks: list[ImageCheck]
    checked: int  # opened and checked in this run
    reused: int  # taken from the cache
    note: str | None = None  # why a cache that existed was not used

    def summary(self, cache: Path) -> str:
        return f"Checked {self.checked} file(s), reused {self.reused} earlier check(s) ({cache})"


def check_with_cache(
    stats: Sequence[FileStat],
    cache: Path,
    min_side: int,
    max_pixels: int,
    workers: int = 0,
    progress: bool = True,
    recheck: bool = False,
) -> CheckedFiles:
    """check_images over the files whose (path, size, mtime_ns) the cache does not hold,
    then rewrite the cache for exactly ``stats``. ``stats`` are taken before the checks:
    a file edited during the run then differs next time and is checked again."""
    key = cache_key(min_side, max_pixels)
    entries, note = ({}, None) if recheck else load_cache(cache, key)
    checks: list[ImageCheck | None] = []
    todo: list[int] = []
    for i, s in enumerate(stats):
        hit = entries.get(s.path)
        if hit is not None and hit[:2] == (s.size, s.mtime_ns) and _still(hit[2], hit[3]):
            checks.append(hit[3])
        else:
            checks.append(None)
            todo.append(i)
    fresh = check_images([stats[i].path for i in todo], min_side, max_pixels, workers, progress)
    for i, check in zip(todo, fresh):
        checks[i] = check
    done = [c for c in checks if c is not None]
    save_cache(cache, key, stats, done)
    return CheckedFiles(done, len(todo), len(stats) - len(todo), note)


def _still(racy: bool, check: ImageCheck) -> bool:
    """A racy entry (its file changed within RACY_SECONDS of the check) counts only while the
    file's content still hashes to the remembered sha256; a skipped one has none: rechecked."""
    if not racy:
        return True
    try:
        return bool(check.sha256) and file_sha256(check.path) == check.sha256
    except OSError:
        return False


def _describe(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no settings recorded"
    names = {"min_side": "data.min_side", "max_pixels": "data.max_pixels"}
    changed = [(names.get(k, k), old.get(k), v) for k, v in new.items() if old.get(k) != v]
    return ", ".join(f"{name} was {was!r}, now {now!r}" for name, was, now in changed)
