"""CSV shards: one line per element written by Beam's WriteToText, merged into one CSV.

Each element becomes one CSV record formatted by the csv module, so a path holding a comma,
a quote or even a newline round-trips; the merge reads every shard with the csv module
(``apache_beam.io.filesystems``, so shards may live on gs:// or s3://), sorts the records
and writes the final file atomically with ``pipeline.files.write_csv``, the writer of the
local stages, so equal records give byte-identical files. Shards (and their folder, when
local and left empty) are deleted once merged.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.files import write_csv

SHARD_SUFFIX = ".csv"


def csv_record(values: Sequence[Any]) -> str:
    """One CSV record without its line end (WriteToText adds one)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()[:-1]


def shard_prefix(folder: str, kind: str) -> str:
    """A fresh prefix per run, so that shards of an earlier run are never merged."""
    return f"{folder.rstrip('/')}/{kind}-{uuid.uuid4().hex[:12]}"


def read_shards(prefix: str) -> tuple[list[list[str]], list[str]]:
    """Every record of every shard written under ``prefix``, and the shard names."""
    from apache_beam.io.filesystems import FileSystems

    matches = FileSystems.match([f"{prefix}-*-of-*{SHARD_SUFFIX}"])[0].metadata_list
    names = sorted(m.path for m in matches)
    records: list[list[str]] = []
    for name in names:
        with FileSystems.open(name) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            records.extend(csv.reader(text))
    return records, names


def merge_shards(
    prefix: str,
    output: Path,
    header: Sequence[str],
    key: Callable[[list[str]], Any],
    finish: Callable[[list[list[str]]], list[list[str]]] = lambda rows: rows,
) -> tuple[Path, list[list[str]], int]:
    """Merge the shards under ``prefix`` into ``output``: records sorted by ``key``, then
    ``finish``ed (whole-table steps, such as the split); returns the file, its rows and the
    number of shards."""
    from apache_beam.io.filesystems import FileSystems

    records, names = read_shards(prefix)
    rows = finish(sorted(records, key=key))
    written = write_csv(output, header, rows)
    if names:
        FileSystems.delete(names)
    folder = Path(prefix).parent
    if "://" not in prefix and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # the shard folder this run made, now empty
    return written, rows, len(names)
