"""Resumable CSV output: rows saved as they finish, so an interrupted `make predict` resumes.

Two hidden files beside the output (hidden, so a folder that holds the output does not
list them as photos to classify):

    .<name>.partial        rows finished by this attempt, appended and fsync'd per batch
    .<name>.partial.kept   rows kept from earlier attempts

Each starts with a key line (the model and every option that changes a row: a rerun with
another model or options discards them) and holds CSV rows sorted by path: the output's
columns, then the file's size and modification time in nanoseconds. A rerun keeps the
rows whose file still has that size and time, and classifies the rest; the finished CSV
is the sorted merge of the two files, written to a temporary name and renamed into place,
so it is never half-written. Memory stays flat: every pass streams.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.files import atomic_path, naming_errors
from pipeline.images import NOT_UTF8, reason_key, text_path

KEY_PREFIX = "# make predict: rows finished so far, key "


def resume_key(identity: Any) -> str:
    """A short digest of everything that decides a row's content (JSON-serialisable)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class PartialRows:
    """The partial files of one output: read what an earlier attempt left, append, finish."""

    def __init__(self, output: Path, key: str, header: Sequence[str]) -> None:
        self.output = output
        self.header = list(header)
        self.key_line = f"{KEY_PREFIX}{key}\n"
        self.partial = output.with_name(f".{output.name}.partial")
        self.kept = output.with_name(f".{output.name}.partial.kept")
        self._fh: io.TextIOWrapper | None = None

    # ------------------------------------------------------------------ reading

    def _rows(self, path: Path) -> Iterator[list[str]]:
        """The complete, sorted rows of one file; stops at the first torn or disordered one
        (a kill -9 can cut the last line short)."""
        width = len(self.header) + 2
        with open(path, newline="", encoding="utf-8") as fh:
            if fh.readline() != self.key_line:
                return
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
        with open(path, "rb") as raw:
            raw.seek(max(0, end - 1))
            ends_whole = raw.read(1) == b"\n"
        with open(path, newline="", encoding="utf-8") as fh:
            fh.readline()
            last = ""
            pending: list[str] | None = None
            for record in csv.reader(fh):
                if pending is not None:
                    yield pending
                if len(record) != width or record[0] < last:
                    return
                if not (_is_int(record[-1]) and _is_int(record[-2])):
                    return
                pending, last = record, record[0]
            if pending is not None and ends_whole:
                yield pending

    def stale(self) -> list[Path]:
        """Partial files written for another model or other options: never reused."""
        found = []
        for path in (self.partial, self.kept):
            if path.is_file():
                with open(path, encoding="utf-8", errors="replace") as fh:
                    if fh.readline() != self.key_line:
                        found.append(path)
        return found

    def previous(self) -> Iterator[list[str]]:
        """Every row an earlier attempt finished, sorted by path (a path may repeat)."""
        sources = [self._rows(p) for p in (self.kept, self.partial) if p.is_file()]
        return heapq.merge(*sources, key=lambda r: r[0])

    # ------------------------------------------------------------------ starting

    def start(self, paths: Sequence[Path], cell: int) -> tuple[bytearray, int]:
        """Keep the earlier rows whose file is unchanged (size and modification time).

        Rows are kept by whole cells of ``cell`` consecutive paths (the model's batches:
        pipeline.predict.stream): a cell with any file to classify is classified whole,
        so each image is computed in the same batch, at the same place, as in a run
        that was never interrupted. Returns one flag per path (1: classify it) and the
        number of rows kept. The kept rows are rewritten into .partial.kept before the
        old files go, so a kill at any point loses nothing already finished.
        """
        for path in self.stale():
            path.unlink()
        todo = bytearray(b"\x01") * len(paths)
        if not (self.partial.is_file() or self.kept.is_file()):
            return todo, 0
        kept = 0
        previous = self.previous()
        current = next(previous, None)
        with atomic_path(self.kept) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(self.key_line)
            writer = csv.writer(fh, lineterminator="\n")
            for first in range(0, len(paths), cell):
                rows = []
                for path in paths[first : first + cell]:
                    name = text_path(path)
                    while current is not None and current[0] < name:
                        current = next(previous, None)
                    if (
                        current is not None
                        and current[0] == name == str(path)  # not a name that is not UTF-8
                        and _unchanged(current, path)
                    ):
                        rows.append(current)
                if len(rows) == len(paths[first : first + cell]):
                    writer.writerows(rows)
                    todo[first : first + cell] = bytes(len(rows))
                    kept += len(rows)
            fh.flush()
            os.fsync(fh.fileno())
        self.partial.unlink(missing_ok=True)
        return todo, kept

    # ------------------------------------------------------------------ appending

    def append(self, rows: Iterable[Sequence[Any]]) -> None:
        """Add finished rows (output columns, size, mtime_ns), durable before returning."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        if not buf.tell():
            return
        with naming_errors(self.partial):
            if self._fh is None:
                # Open across batches (one file, appended per batch); close() ends it.
                self._fh = open(self.partial, "w", newline="", encoding="utf-8")  # noqa: SIM115
                self._fh.write(self.key_line)
            self._fh.write(buf.getvalue())
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with naming_errors(self.partial):
                fh.close()

    # ------------------------------------------------------------------ finishing

    def finish(self) -> Counter:
        """Write the output (sorted merge of both files) atomically; remove the partial files.

        Returns the count of rows by reason (``"ok"`` for classified ones).
        """
        self.close()
        counts: Counter = Counter()
        width = len(self.header)
        status, reason = self.header.index("status"), self.header.index("reason")
        with (
            atomic_path(self.output) as tmp,
            open(tmp, "w", newline="", encoding="utf-8") as fh,
        ):
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(self.header)
            for row in self.previous():  # disjoint by construction: no path repeats here
                writer.writerow(row[:width])
                counts["ok" if row[status] == "ok" else reason_key(row[reason])] += 1
            fh.flush()
            os.fsync(fh.fileno())
        self.partial.unlink(missing_ok=True)
        self.kept.unlink(missing_ok=True)
        return counts


def csv_order(path: Path) -> tuple[str, str]:
    """The order of the rows: by the path as the CSV writes it (pipeline.images.text_path),
    so that the file reads sorted. A name that is not UTF-8 can read like another file's
    (byte 0xE9 and the four characters \\xe9); the second key orders such a pair, and
    their rows are never kept (it is skipped anyway, and cheap to redo)."""
    return text_path(path), str(path)


def _unchanged(row: list[str], path: Path) -> bool:
    """The file is as it was when the row was made; an unreadable file is tried again."""
    if row[1] == "skipped" and (row[-3].startswith("unreadable") or row[-3] == NOT_UTF8):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return row[-2] == str(st.st_size) and row[-1] == str(st.st_mtime_ns)


def _is_int(text: str) -> bool:
    """A size or time as written (-1 when the file could not be read)."""
    return text.removeprefix("-").isdigit()
