"""The clean stage (`make clean`): remove what the pipeline made, and nothing else.

A folder is the pipeline's own when it carries ``GENERATED_MARKER`` (see
``pipeline.files.generated_dir``). Only direct children of ``paths.data``,
``paths.models`` and ``paths.reports`` that carry it are removed, whole; everything else
there (photos, archives, notes, README.md, any folder without the marker) is
kept and listed. A symbolic link is never followed, so nothing outside is ever touched.
Imports only the standard library: `make clean` works before `make setup`.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.data.exclude import EXCLUDE_FILE
from pipeline.files import GENERATED_MARKER

# Files a user writes into a marked folder (``data/<dataset id>/exclude.txt``): make clean
# empties such a folder but keeps them, and the marker with them.
USER_FILES = frozenset({EXCLUDE_FILE})

MIB = 1024 * 1024


@dataclass
class CleanResult:
    removed: list[Path] = field(default_factory=list)  # marked folders deleted
    kept: list[Path] = field(default_factory=list)  # everything else found, untouched


def _is_marked(entry: os.DirEntry) -> bool:
    """A real folder (not a link) with a regular marker file (not a link) in it."""
    if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        return stat.S_ISREG(os.lstat(Path(entry.path) / GENERATED_MARKER).st_mode)
    except OSError:
        return False


def _unlock(folder: Path) -> int:
    """Make every folder below ``folder`` writable and listable (read-only files and folders
    would stop the removal); return the bytes of the regular files. Links are not followed."""
    mode = os.lstat(folder).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(folder, mode | stat.S_IRWXU)
    size = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                size += _unlock(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                size += st.st_size
                if not st.st_mode & stat.S_IWUSR:  # Windows refuses to delete these
                    os.chmod(entry.path, st.st_mode | stat.S_IWUSR)
    return size


def _empty_except(folder: Path, keep: set[str]) -> None:
    for entry in os.scandir(folder):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _show(path: Path, is_dir: bool) -> str:
    return f"{path}/" if is_dir else str(path)


def clean(cfg: Config) -> CleanResult:
    """Remove every marked folder directly under paths.data, paths.models, paths.reports."""
    result = CleanResult()
    reasons: dict[str, list[str]] = {}
    failures: list[str] = []
    total = 0
    seen: set[Path] = set()
    for root in (Path(cfg.paths.data), Path(cfg.paths.models), Path(cfg.paths.reports)):
        if not root.is_dir() or root.resolve() in seen:
            continue
        seen.add(root.resolve())
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = root / entry.name
            if entry.name == "README.md":
                continue
            if entry.is_symlink():
                result.kept.append(path)
                reasons.setdefault("a link, not followed", []).append(str(path))
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if not _is_marked(entry):
                result.kept.append(path)
                reasons.setdefault("not made by the pipeline", []).append(_show(path, is_dir))
                continue
            try:
                size = _unlock(path)
                mine = [path / n for n in sorted(USER_FILES) if (path / n).is_file()]
                if mine:
                    size -= sum(p.stat().st_size for p in mine)
                    _empty_except(path, {p.name for p in mine} | {GENERATED_MARKER})
                    result.kept.extend(mine)
                    reasons.setdefault("yours, in a folder emptied", []).extend(map(str, mine))
                else:
                    shutil.rmtree(path)
            except OSError as exc:
                failures.append(f"{path}/: {exc}")
                continue
            total += size
            result.removed.append(path)
            kept = f", kept your {', '.join(p.name for p in mine)}" if mine else ""
            print(f"removed: {path}/ ({size / MIB:.1f} MiB{kept})")
    if result.removed:
        print(f"removed {len(result.removed)} folder(s), {total / MIB:.1f} MiB in all")
    else:
        where = ", ".join(
            f"{root}/" for root in (cfg.paths.data, cfg.paths.models, cfg.paths.reports)
        )
        print(f"nothing to remove: no folder directly under {where} carries {GENERATED_MARKER}")
    if reasons:
        print("kept: " + "; ".join(f"{', '.join(p)} ({why})" for why, p in reasons.items()))
    if failures:
        raise RuntimeError("could not remove " + "; ".join(failures))
    return result
