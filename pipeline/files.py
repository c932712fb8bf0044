"""Atomic file output: a reader never sees a half-written file, a crash never leaves one.

Every artefact the pipeline writes goes through here: write to a temporary name in the
same folder, then ``os.replace`` it over the final name (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import stat
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
        with naming_errors(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """Give ``path`` to an OSError raised without a file name (a failed write, flush or
    close names none), so that the one-line error says which output could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


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
# The mark of a folder the user made, empty, and a stage then wrote into: the pipeline may
# write there again, and `make clean` keeps it (it is the user's).
ADOPTED_MARKER = ".written-by-pipeline"
_MARKER_TEXT = "Made by the pipeline; `make clean` deletes this folder.\n"
_ADOPTED_TEXT = "The pipeline writes here; the folder is yours: `make clean` keeps it.\n"


class OwnershipError(ValueError):
    """A stage was asked to write into a folder that holds files the pipeline did not make."""


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def generated_dir(path: str | Path) -> Path:
    """``path``, a folder the pipeline may write into; created and stamped if absent.

    Ownership is recorded, never inferred: a folder is the pipeline's (and `make clean`'s)
    only when the pipeline created it, and creation and stamp are one step (a stamped
    temporary folder renamed into place). An existing folder is never stamped: it is used
    when the pipeline made it, or wrote into it before (``ADOPTED_MARKER``), or it is empty
    (then marked adopted); one holding anything else is refused with ``OwnershipError``.
    """
    path = Path(path)
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            with naming_errors(path):
                (tmp / GENERATED_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            # A folder with a file in it is never replaced by rename: if another process
            # made `path` first, this fails and that folder is checked below.
            if not os.path.lexists(path):
                os.rename(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not path.is_dir():  # a link to a folder is judged by the folder it leads to
        raise OwnershipError(
            f"{path} exists and is not a folder; move it away, or choose another name"
        )
    if _is_regular(path / GENERATED_MARKER) or _is_regular(path / ADOPTED_MARKER):
        return path
    if any(path.iterdir()):
        raise OwnershipError(
            f"{path}/ already exists and holds files the pipeline did not make; move them "
            "away or choose another name (nothing was written there)"
        )
    with naming_errors(path / ADOPTED_MARKER):
        (path / ADOPTED_MARKER).write_text(_ADOPTED_TEXT, encoding="utf-8")
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ----------------------------------------------------------------------------- locks


class LockedError(RuntimeError):
    """Another process holds the lock on an output this process was about to write."""


_held: set[str] = set()  # lock files this process holds: a nested request is already met


def lock_file(target: str | Path) -> Path:
    """Where the lock on ``target`` (a folder or a file) lives: beside it, hidden."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder(path: Path) -> str:
    """'process 123 (make train)', from what the holder wrote into the lock file."""
    try:
        pid, _, what = path.read_text(encoding="utf-8").strip().partition(" ")
    except OSError:
        pid, what = "", ""
    if not pid.isdigit():
        return "another process"
    return f"process {pid} ({what})" if what else f"process {pid}"


@contextlib.contextmanager
def exclusive(target: str | Path, what: str, wait: bool, fix: str = "") -> Iterator[None]:
    """Hold the exclusive lock on ``target`` while the block writes it.

    An ``flock`` on a hidden file beside the target: the kernel drops it when the holder
    exits, however it ends (a ``kill -9`` included), so a dead process never blocks a rerun.
    ``wait``: wait for the holder with a message, else raise ``LockedError`` naming it
    (``fix`` says what to do). Re-entrant within a process. The lock file is removed on
    release while still held; a waiter that then gets the lock on the removed file notices
    (its inode differs from the path's) and takes the new one.
    """
    import fcntl  # POSIX only: imported here so that the rest of this module loads anywhere

    path = lock_file(target)
    key = str(path.absolute())
    if key in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise LockedError(
                    f"{target} is being written by {_holder(path)}; "
                    f"{fix or 'wait for it to finish, then run this again'}"
                ) from None
            if not told:
                print(f"Waiting for {_holder(path)}, which is writing {target} ...", flush=True)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # a full disk: the lock holds, its holder goes unnamed
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
