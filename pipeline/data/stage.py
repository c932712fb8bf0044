"""The data stage (`make data`): find the images, check every one, split, write manifests.

A file checked by an earlier run, unchanged since (same path, size and modification time),
is not opened again: its result is remembered in data/<dataset id>/checks.jsonl
(pipeline.data.check_cache).

Public entries: ``prepare_data(cfg)`` (the stage) and ``ensure_manifests(cfg)`` (what
every other stage calls: the manifests for cfg's data set and options, rebuilt first when
they are missing or were made from other files or under other options). It never
modifies, moves or deletes a user's file; it writes only under data/<dataset id>/ and
reports/<dataset id>/.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import CONFIG_FILE, Config, save_config
from pipeline.data.check_cache import CACHE_FILE, check_with_cache
from pipeline.data.exclude import EXCLUDE_FILE, Exclusions, read_exclusions
from pipeline.data.exclude import REASON as EXCLUDED
from pipeline.data.image_cache import build_image_cache
from pipeline.data.listing import Candidate, Listing, list_source, unusable_reason
from pipeline.data.manifest import (
    CLASSES_FILE,
    SPLIT_FILES,
    ManifestRow,
    write_classes,
    write_manifest,
)
from pipeline.data.near_duplicates import (
    NEAR_DUPLICATES_REPORT,
    near_duplicate_warnings,
    near_groups,
    split_keys,
)
from pipeline.data.provenance import (
    DatasetRecord,
    DataSummary,
    FileStat,
    SkippedFile,
    listing_digest,
    manifest_digests,
    read_record,
    split_options,
    stale_reasons,
    write_data_summary,
    write_record,
)
from pipeline.data.reports import draw_data_reports
from pipeline.data.sources import Source
from pipeline.data.split import SPLITS, assign_splits, check_split_counts, split_counts
from pipeline.files import (
    exclusive,
    generated_dir,
    read_csv,
    write_csv,
)
from pipeline.images import (
    ImageCheck,
    reason_key,
    text_path,
)

CHECK_REPORT = "check_report.csv"
DUPLICATES_REPORT = "duplicates.csv"


@dataclass
class DataResult:
    dataset_dir: Path
    reports_dir: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    checked: int = 0  # files opened and checked in this run
    reused: int = 0  # files whose remembered check was reused (pipeline.data.check_cache)


@dataclass
class Inventory:
    """Every file found, its check, and the split of each usable image."""

    source: Source
    candidates: list[Candidate]
    stats: list[FileStat]  # size and modification time of each candidate, as checked
    checks: list[ImageCheck]
    classes: list[str]
    counts: dict[str, dict[str, int]]
    by_split: dict[str, list[ManifestRow]]
    split_of_path: dict[str, str]
    duplicates: list[list[tuple[str, str, str]]]  # identical files: (path, label, split)
    near_duplicates: list[list[tuple[str, str, str]]]  # near-copies, identical ones included
    exclusions: Exclusions
    warnings: list[str]
    checked: int = 0  # of the candidates, how many were checked afresh (the rest reused)


def take_inventory(cfg: Config, listing: Listing, progress: bool = True) -> Inventory:
    """Check every candidate file, then split the usable ones; raises on unusable splits."""
    d, source, candidates = cfg.data, listing.source, listing.candidates
    classes_found = sorted({c.label for c in candidates if c.label})
    print(
        f"Found {len(candidates)} files in {len(classes_found)} class folders under {source.origin}"
    )
    if not candidates:
        raise ValueError(f"{source.origin}: no files found; expected <class>/<image> folders")
    checked = check_with_cache(
        listing.stats,
        cfg.dataset_dir() / CACHE_FILE,
        d.min_side,
        d.max_pixels,
        d.workers,
        progress,
        recheck=d.recheck,
    )
    if checked.note:
        print(f"note: {checked.note}")
    print(checked.summary(cfg.dataset_dir() / CACHE_FILE))
    checks = checked.checks
    exclusions = read_exclusions(cfg.dataset_dir())
    excluded = exclusions.resolve(root for root, _ in source.roots)
    matched = set()
    real_dirs: dict[Path, str] = {}
    for cand, check in zip(candidates, checks):
        if check.status == "ok" and (reason := unusable_reason(cand)):
            check.status, check.reason = "skipped", reason
        if excluded and (line := excluded.get(_real_path(cand.path, real_dirs))):
            check.status, check.reason = "skipped", EXCLUDED
            matched.add(line)

    usable = [(c, k) for c, k in zip(candidates, checks) if k.status == "ok"]
    sha256s = [k.sha256 for _, k in usable]
    keys = split_keys(sha256s, [k.phash for _, k in usable], d.near_duplicate_bits)
    splits = assign_splits(
        [(key, c.given_split) for key, (c, _) in zip(keys, usable)],
        d.split_seed,
        d.val_fraction,
        d.test_fraction,
        fixed_test=any(given == "test" for _, given in source.roots),
    )
    counts = split_counts([c.label for c, _ in usable], splits)
    warnings = [
        f"class folder {label!r} has no usable images; it is left out"
        for label in classes_found
        if label not in counts
    ]
    unmatched = [line for line in exclusions.lines if line not in matched]
    if unmatched:
        warnings.append(
            f"{len(unmatched)} line(s) of {cfg.dataset_dir() / EXCLUDE_FILE} name no file of "
            f"the data set (first: {unmatched[0]}); fix the path or remove the line"
        )
    warnings += check_split_counts(counts, d.small_class_warning)
    classes = sorted(counts)
    index = {label: i for i, label in enumerate(classes)}
    by_split: dict[str, list[ManifestRow]] = {s: [] for s in SPLITS}
    split_of_path: dict[str, str] = {}
    for (cand, check), split in zip(usable, splits):
        row = ManifestRow(
            _real_path(cand.path, real_dirs),
            cand.label,
            index[cand.label],
            check.sha256,
            check.width,
            check.height,
            check.orientation,
            check.decoder,
        )
        by_split[split].append(row)
        split_of_path[check.path] = split
    duplicates = _duplicate_groups(usable, split_of_path)
    warnings += _duplicate_warnings(duplicates)
    members = [(k.path, c.label, split_of_path[k.path]) for c, k in usable]
    near = [[members[i] for i in g] for g in near_groups(keys, sha256s)]
    warnings += near_duplicate_warnings(near, d.near_duplicate_bits, cfg.dataset_dir())
    return Inventory(
        source,
        candidates,
        listing.stats,
        checks,
        classes,
        counts,
        by_split,
        split_of_path,
        duplicates,
        near,
        exclusions,
        warnings,
        checked.checked,
    )


def prepare_data(cfg: Config, progress: bool = True, listing: Listing | None = None) -> DataResult:
    """Resolve and list the source (unless ``listing`` is that, already made), check every
    image, split, write manifests and reports. A second process preparing the same data set
    waits for the first (``pipeline.files.exclusive``), then finds its work done or redoes it."""
    with exclusive(cfg.dataset_dir(), f"make data DATASET={cfg.data.dataset}", wait=True):
        return _prepare_data(cfg, progress, listing)


def _prepare_data(cfg: Config, progress: bool, listing: Listing | None) -> DataResult:
    out_dir = cfg.dataset_dir()
    reports_dir = generated_dir(Path(cfg.paths.reports) / out_dir.name)
    inv = take_inventory(cfg, listing or list_source(cfg, out_dir), progress)
    files = _write_outputs(cfg, out_dir, inv)
    if cfg.data.cache_size:
        all_rows = [r for s in SPLITS for r in inv.by_split[s]]
        files.append(build_image_cache(all_rows, out_dir, cfg.data.cache_size, cfg.data.workers))

    skipped = Counter(reason_key(k.reason) for k in inv.checks if k.status != "ok")
    result = DataResult(
        out_dir,
        reports_dir,
        inv.classes,
        inv.counts,
        dict(skipped),
        inv.warnings,
        files,
        checked=inv.checked,
        reused=len(inv.candidates) - inv.checked,
    )
    _print_summary(result, inv.source)
    result.files += draw_data_reports(
        cfg, out_dir, reports_dir, inv.counts, inv.by_split["train"], inv.classes
    )
    return result


def ensure_manifests(cfg: Config) -> Path:
    """The folder of manifests made from cfg's source, as it is now, under cfg's options.

    They are (re)built first, saying why, when they are missing, when a split option
    differs, when a file was added, removed or modified, or when a manifest was edited:
    a stage never trains or scores on manifests made from other data.
    """
    out_dir = cfg.dataset_dir()
    with exclusive(out_dir, f"make data DATASET={cfg.data.dataset}", wait=True):
        return _ensure_manifests(cfg, out_dir)


def _ensure_manifests(cfg: Config, out_dir: Path) -> Path:
    record = read_record(out_dir)
    listing = None  # listed once: the data stage reuses it
    if record is None:
        reasons = [f"no manifests for {cfg.data.dataset} in {out_dir}/ yet"]
    else:
        listing = list_source(cfg, out_dir)
        previous = [
            FileStat(r["path"], int(r["size"]), int(r["mtime_ns"]))
            for r in read_csv(out_dir / CHECK_REPORT)
        ]
        options = split_options(cfg.data, read_exclusions(out_dir))
        reasons = stale_reasons(out_dir, record, options, listing.stats, previous)
    if reasons:
        print(f"Running the data stage first: {'; '.join(reasons)}")
        prepare_data(cfg, listing=listing)
    return out_dir


def _real_path(path: Path, real_dirs: dict[Path, str]) -> str:
    """str(path.resolve()), resolving each folder once rather than every folder of every path
    (a syscall per path component: seconds for 20,000 files)."""
    real_dir = real_dirs.get(path.parent)
    if real_dir is None:
        real_dir = real_dirs[path.parent] = os.path.realpath(path.parent)
    return os.path.realpath(path) if os.path.islink(path) else os.path.join(real_dir, path.name)


def _duplicate_groups(usable, split_of_path) -> list[list[tuple[str, str, str]]]:
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for cand, check in usable:
        groups[check.sha256].append((check.path, cand.label, split_of_path[check.path]))
    return [g for g in groups.values() if len(g) > 1]


def _duplicate_warnings(duplicates) -> list[str]:
    if not duplicates:
        return []
    extra = sum(len(g) - 1 for g in duplicates)
    msgs = [f"{extra} duplicate file(s) in {len(duplicates)} group(s); each group shares a split"]
    conflicts = [g for g in duplicates if len({label for _, label, _ in g}) > 1]
    if conflicts:
        msgs.append(
            f"{len(conflicts)} duplicate group(s) carry different labels (see "
            f"{DUPLICATES_REPORT}); fix the class folders or expect those images to count wrong"
        )
    return msgs


def _write_outputs(cfg: Config, out_dir: Path, inv: Inventory) -> list[Path]:
    files = [
        write_manifest(out_dir / SPLIT_FILES[s], sorted(inv.by_split[s], key=lambda r: r.path))
        for s in SPLITS
    ]
    files.append(write_classes(out_dir / CLASSES_FILE, inv.classes))
    files.append(
        write_csv(
            out_dir / CHECK_REPORT,
            ["label", "split", *ImageCheck.columns(), "size", "mtime_ns"],
            (
                [
                    text_path(c.label or ""),
                    inv.split_of_path.get(k.path, ""),
                    text_path(k.path),
                    *k.row()[1:],
                    s.size,
                    s.mtime_ns,
                ]
                for c, k, s in zip(inv.candidates, inv.checks, inv.stats)
            ),
        )
    )
    files.append(
        write_csv(
            out_dir / DUPLICATES_REPORT,
            ["group", "path", "label", "split"],
            ([i, p, label, s] for i, g in enumerate(inv.duplicates) for p, label, s in g),
        )
    )
    files.append(
        write_csv(
            out_dir / NEAR_DUPLICATES_REPORT,
            ["group", "path", "label", "split"],
            ([i, p, label, s] for i, g in enumerate(inv.near_duplicates) for p, label, s in g),
        )
    )
    skipped = [k for k in inv.checks if k.status != "ok"]
    files.append(
        write_data_summary(
            out_dir,
            DataSummary(
                dataset=cfg.data.dataset,
                origin=inv.source.origin,
                classes=inv.classes,
                counts=inv.counts,
                totals={s: sum(c[s] for c in inv.counts.values()) for s in SPLITS},
                files_found=len(inv.candidates),
                skipped=[SkippedFile(text_path(k.path), k.reason) for k in skipped],
                duplicate_groups=len(inv.duplicates),
                near_duplicate_groups=len(inv.near_duplicates),
                unlabelled_dir=str(inv.source.unlabelled) if inv.source.unlabelled else None,
                warnings=inv.warnings,
            ),
        )
    )
    files.append(save_config(cfg, out_dir / CONFIG_FILE))
    record = DatasetRecord(
        dataset=cfg.data.dataset,
        origin=inv.source.origin,
        options=split_options(cfg.data, inv.exclusions),
        files=len(inv.stats),
        files_digest=listing_digest(inv.stats),
        manifests=manifest_digests(out_dir),
    )
    files.append(write_record(out_dir, record))  # last: it vouches for the files above
    return files


def _print_summary(result: DataResult, source: Source) -> None:
    width = max(len(c) for c in result.classes)
    print(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS))
    for label in result.classes:
        c = result.counts[label]
        print(f"{label:<{width}}  " + "  ".join(f"{c[s]:>6}" for s in SPLITS))
    totals = [sum(c[s] for c in result.counts.values()) for s in SPLITS]
    print(f"{'total':<{width}}  " + "  ".join(f"{t:>6}" for t in totals))
    if result.skipped:
        print(
            f"Skipped {sum(result.skipped.values())} file(s): "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items()))
            + f" (details: {result.dataset_dir / CHECK_REPORT})"
        )
    for note in source.notes:
        print(note)
    for warning in result.warnings:
        print(f"warning: {warning}")
    if source.unlabelled:
        print(f"Unlabelled images for prediction: {source.unlabelled}")
    print(f"Manifests written to {result.dataset_dir}/")
