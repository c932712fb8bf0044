"""The data stage's per-image check on Beam: the same ``check_image`` on every file, one
worker per share of the files, written as CSV shards and merged into check_report.csv.

The driver lists the source exactly as `make data` does (``pipeline.data.listing.list_source``:
archives extracted, hidden files and OS debris left out, each file's size and modification
time taken before any check), Beam checks the files, and the merge puts the records back in
the listing's order and adds what needs the whole table: the label (class folder), the
data stage's reasons to skip a usable image (``pipeline.data.listing.unusable_reason``: not inside
a class folder, a name that is not UTF-8), and the split (``pipeline.data.split.assign_splits``,
so duplicates share one). The result has check_report.csv's columns and, for the same files
and options, its exact bytes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.beam import require_beam
from pipeline.beam.shards import SHARD_SUFFIX, csv_record, merge_shards, shard_prefix
from pipeline.config import Config
from pipeline.data.split import assign_splits
from pipeline.images import ImageCheck, check_image, text_path

beam = require_beam()

REPORT_COLUMNS = ["label", "split", *ImageCheck.columns(), "size", "mtime_ns"]
STATUS, REASON, SHA256 = 1, 2, 3  # positions in ImageCheck.row()


@dataclass
class CheckRun:
    output: Path
    files: int
    ok: int
    skipped: int
    shards: int
    seconds: float


def check_record(item: tuple[int, bytes], min_side: int, max_pixels: int) -> str:
    """(listing index, path) -> one CSV record: the index, then the check's row.

    Paths travel as bytes: Beam's string coder is UTF-8 and cannot carry a file name that
    is not UTF-8."""
    index, path = item[0], os.fsdecode(item[1])
    row = check_image(path, min_side, max_pixels).row()
    return csv_record([index, text_path(path), *row[1:]])


def check_files(
    items: list[tuple[int, bytes]], min_side: int, max_pixels: int, prefix: str, argv: list[str]
) -> None:
    """Run the Beam pipeline: files -> checks -> CSV shards under ``prefix``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(argv)) as p:
        _ = (
            p
            | "List" >> beam.Create(items)
            # Create makes one bundle; the reshuffle lets every worker take a share.
            | "Spread" >> beam.Reshuffle()
            | "Check" >> beam.Map(check_record, min_side, max_pixels)
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=SHARD_SUFFIX)
        )


def run_check(cfg: Config, output: Path | None, shards: str | None, argv: list[str]) -> CheckRun:
    """Check every file of cfg's data set on Beam; write the merged check report."""
    from pipeline.data.listing import list_source, unusable_reason
    from pipeline.data.stage import CHECK_REPORT

    start = time.perf_counter()
    d = cfg.data
    listing = list_source(cfg, cfg.dataset_dir())
    candidates, stats = listing.candidates, listing.stats
    if not candidates:
        raise ValueError(f"{listing.source.origin}: no files found; expected <class>/<image>")
    output = output or cfg.dataset_dir() / "beam" / CHECK_REPORT
    prefix = shard_prefix(shards or str(output.parent / "shards"), "check")
    print(f"Checking {len(candidates)} files under {listing.source.origin} with Beam")
    check_files(
        [(i, os.fsencode(c.path)) for i, c in enumerate(candidates)],
        d.min_side,
        d.max_pixels,
        prefix,
        argv,
    )
    fixed_test = any(given == "test" for _, given in listing.source.roots)

    def finish(records: list[list[str]]) -> list[list[object]]:
        if [int(r[0]) for r in records] != list(range(len(candidates))):
            raise RuntimeError(
                f"the Beam pipeline returned {len(records)} records for {len(candidates)} files"
            )
        checks = [r[1:] for r in records]
        for cand, check in zip(candidates, checks):
            if check[STATUS] == "ok" and (reason := unusable_reason(cand)):
                check[STATUS], check[REASON] = "skipped", reason
        usable = [i for i, k in enumerate(checks) if k[STATUS] == "ok"]
        splits = assign_splits(
            [(checks[i][SHA256], candidates[i].given_split) for i in usable],
            d.split_seed,
            d.val_fraction,
            d.test_fraction,
            fixed_test=fixed_test,
        )
        split_of = dict(zip(usable, splits))
        return [
            [text_path(c.label or ""), split_of.get(i, ""), *k, s.size, s.mtime_ns]
            for i, (c, k, s) in enumerate(zip(candidates, checks, stats))
        ]

    written, rows, count = merge_shards(prefix, output, REPORT_COLUMNS, lambda r: int(r[0]), finish)
    ok = sum(r[2 + STATUS] == "ok" for r in rows)
    result = CheckRun(written, len(rows), ok, len(rows) - ok, count, time.perf_counter() - start)
    print(
        f"Checked {result.files} files in {result.seconds:.1f} s ({count} shards merged): "
        f"{result.ok} usable, {result.skipped} skipped: {written}"
    )
    return result
