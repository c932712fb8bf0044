"""Atomic file output: a reader never sees a half-written file, a crash never leaves one.

Every artefact the pipeline writes goes through here: write to a temporary name in the
same folder, then ``os.replace`` it over the final name (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    For libraries that insist on writing to a path themselves (``savefig``, ``model.save``).
    ``suffix`` keeps an extension those libraries check (``.keras``, ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; outputs get the permissions any new file would (umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_dir(tmp: Path, path: Path) -> None:
    """Swap a finished folder into place; a reader sees the old or the new one, whole."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """The parsed file, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# A file the pipeline puts in every top-level folder it creates under data/, models/ and
# reports/: `make clean` removes a folder only when it carries this marker, so anything a
# user placed there (photos, archives, notes) is never touched.
GENERATED_MARKER = ".generated-by-pipeline"


def generated_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and mark it as the pipeline's own output."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / GENERATED_MARKER
    if not marker.exists():
        marker.write_text(
            "Made by the pipeline; `make clean` deletes this folder.\n", encoding="utf-8"
        )
    return path
