"""What data a result was computed from: a data set's identity, and a run's own split.

Three rules keep a metric from being computed on the wrong images without a word:

1. A data set's manifests live in a folder named by the source itself (``dataset_id``: the
   resolved path, not the base name), so two sources can never share one.
2. The manifests carry a record (``dataset.json``): the source, every option that shapes
   the split, a digest of the file listing (path, size, modification time) and the digest
   of each manifest. A stage that needs manifests asks ``stale_reasons`` and rebuilds them
   (saying why) instead of using manifests made from other files or under other options.
3. A run keeps a copy of the manifests it was trained on (``models/<run>/data/``), and
   evaluation scores that recorded split, after checking that its images are unchanged
   and that none of them was a training image.

Light to import (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.exclude import EXCLUDE_FILE, Exclusions
from pipeline.data.manifest import (
    CLASSES_FILE,
    SPLIT_FILES,
    ManifestRow,
    read_classes,
    read_manifest,
)
from pipeline.files import read_json, write_json
from pipeline.images import file_sha256

RECORD_FILE = "dataset.json"  # the record of what made a data set's manifests
RUN_DATA_DIR = "data"  # models/<run>/data/: the manifests the run was trained on
DATA_SUMMARY_FILE = "summary.json"  # the data stage's counts and warnings
# Options that decide which usable image lands in which split, with which label.
SPLIT_OPTIONS = (
    "split_seed",
    "val_fraction",
    "test_fraction",
    "min_side",
    "max_pixels",
    "near_duplicate_bits",
)
MANIFEST_FILES = (*SPLIT_FILES.values(), CLASSES_FILE)
RECORD_VERSION = 1


class ProvenanceError(ValueError):
    """A result would be computed from the wrong data; the message says what to do."""


def dataset_id(dataset: str) -> str:
    """The folder name of a data set's manifests under data/.

    'flowers' and 'intel' are one data set each, wherever their local copy is; a
    'folder:PATH' is named by its base name plus a digest of its resolved path, so two
    folders called 'photos' never share manifests.

    >>> dataset_id("flowers")
    'flowers'
    >>> dataset_id("folder:/home/a/photos") == dataset_id("folder:/home/b/photos")
    False
    """
    if not dataset.startswith("folder:"):
        return dataset
    path = Path(dataset[len("folder:") :]).expanduser().resolve()
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
    return f"{path.name or 'folder'}-{digest}"


@dataclass(frozen=True)
class FileStat:
    """One file of the source as the data stage saw it: enough to notice any change."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStat:
        """The file's stat; a link that leads nowhere (dangling, a loop) gets the link's own,
        so it is listed, and its check says why it is skipped."""
        try:
            st = path.stat()
        except OSError:
            st = path.lstat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


def listing_digest(stats: Iterable[FileStat]) -> str:
    h = hashlib.sha256()
    for s in sorted(stats, key=lambda s: s.path):
        # surrogateescape: a file name that is not UTF-8 counts by its bytes
        h.update(f"{s.path}\0{s.size}\0{s.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def split_options(data_cfg: Any, exclusions: Exclusions) -> dict[str, Any]:
    """What decides the split: SPLIT_OPTIONS and the user's exclude.txt (as its summary)."""
    return {**{key: getattr(data_cfg, key) for key in SPLIT_OPTIONS}, "exclude": exclusions.summary}


@dataclass
class DatasetRecord:
    """dataset.json: what the manifests in a data set's folder were made from."""

    dataset: str  # data.dataset as given
    origin: str  # where the files were found
    options: dict[str, Any]  # SPLIT_OPTIONS
    files: int  # files found (usable or not)
    files_digest: str  # listing_digest of every file found
    manifests: dict[str, str]  # file name -> sha256, for MANIFEST_FILES
    version: int = RECORD_VERSION

    @property
    def fingerprint(self) -> str:
        """One digest for 'these manifests, from these files, under these options'."""
        text = repr((self.options, self.files_digest, sorted(self.manifests.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class DataSummary:
    """summary.json: the data stage's counts and warnings, as the run's report shows them."""

    dataset: str  # data.dataset as given
    origin: str  # where the files were found
    classes: list[str]
    counts: dict[str, dict[str, int]]  # class -> split -> images
    totals: dict[str, int]  # split -> images
    files_found: int
    skipped: list[SkippedFile]  # files the check refused, with the reason
    duplicate_groups: int
    unlabelled_dir: str | None
    warnings: list[str]
    near_duplicate_groups: int = 0  # groups of near-copies (not only identical files)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSummary:
        return cls(**{**data, "skipped": [SkippedFile(**s) for s in data.get("skipped", [])]})


@dataclass(frozen=True)
class SkippedFile:
    """A file the data stage did not use, and why (summary.json's ``skipped``)."""

    path: str
    reason: str


def write_data_summary(folder: Path, summary: DataSummary) -> Path:
    return write_json(folder / DATA_SUMMARY_FILE, asdict(summary))


def read_data_summary(folder: Path) -> DataSummary | None:
    """The folder's summary.json, or None where there is none (a run from before it)."""
    raw = read_json(folder / DATA_SUMMARY_FILE)
    return DataSummary.from_json(raw) if isinstance(raw, dict) else None


def manifest_digests(folder: Path) -> dict[str, str]:
    return {
        name: file_sha256(folder / name) for name in MANIFEST_FILES if (folder / name).is_file()
    }


def write_record(folder: Path, record: DatasetRecord) -> Path:
    """Written last by the data stage: its presence says the manifests beside it are whole."""
    return write_json(folder / RECORD_FILE, record.to_dict())


def read_record(folder: Path) -> DatasetRecord | None:
    raw = read_json(folder / RECORD_FILE)
    if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
        return None
    raw.pop("fingerprint", None)
    return DatasetRecord(**raw)


def stale_reasons(
    folder: Path,
    record: DatasetRecord,
    options: dict[str, Any],
    stats: list[FileStat],
    previous: list[FileStat],
) -> list[str]:
    """Why the manifests in ``folder`` cannot be used with these options and these files
    (``previous``: the files as the data stage saw them); [] when they can."""
    reasons = option_changes(record.options, options)
    if listing_digest(stats) != record.files_digest:
        reasons.append(f"the files changed since `make data` ({listing_changes(previous, stats)})")
    if manifest_digests(folder) != record.manifests:
        reasons.append(f"the manifests in {folder}/ were edited or half-written")
    return reasons


def option_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """How split options differ, in the one wording of the data stage's rebuild reasons and
    of evaluate's note.

    >>> option_changes({"split_seed": 42, "min_side": 32}, {"split_seed": 7, "min_side": 32})
    ['data.split_seed was 42, now 7']
    """
    return [
        f"{EXCLUDE_FILE if key == 'exclude' else f'data.{key}'} was {before.get(key)!r}, "
        f"now {value!r}"
        for key, value in after.items()
        if before.get(key) != value
    ]


def listing_changes(before: list[FileStat], after: list[FileStat]) -> str:
    """'2 added, 1 removed, 3 modified' between two listings.

    >>> a, b = FileStat("a", 1, 1), FileStat("b", 1, 1)
    >>> listing_changes([a, b], [FileStat("a", 2, 1), FileStat("c", 1, 1)])
    '1 added, 1 removed, 1 modified'
    """
    old = {s.path: s for s in before}
    new = {s.path: s for s in after}
    counts = {
        "added": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "modified": sum(old[p] != new[p] for p in old.keys() & new.keys()),
    }
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "reordered"


# ----------------------------------------------------------------------------- runs


def record_run_data(dataset_folder: Path, run_dir: Path) -> Path:
    """Keep the manifests a run is trained on in models/<run>/data/ (hard links where the
    file system allows: the data stage replaces files rather than rewriting them, so a link
    keeps this version). Returns the folder."""
    target = run_dir / RUN_DATA_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (*MANIFEST_FILES, RECORD_FILE, DATA_SUMMARY_FILE):
        src, dest = dataset_folder / name, target / name
        if not src.is_file():
            continue
        tmp = dest.with_name(f".{name}.partial-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    return target


@dataclass
class RunData:
    """The split a run was trained on, as recorded in its folder."""

    folder: Path
    classes: list[str]
    record: DatasetRecord | None

    def rows(self, split: str) -> list[ManifestRow]:
        return read_manifest(self.folder / SPLIT_FILES[split])


def load_run_data(run_dir: Path) -> RunData:
    folder = run_dir / RUN_DATA_DIR
    if not (folder / SPLIT_FILES["train"]).is_file():
        raise ProvenanceError(
            f"{run_dir} has no recorded split ({folder}/ is missing): it was trained by an "
            "older version, so which images it trained on is unknown; train it again with "
            "`make train`"
        )
    return RunData(folder, read_classes(folder / CLASSES_FILE), read_record(folder))


def check_no_leak(scored: list[ManifestRow], trained: list[ManifestRow], split: str) -> None:
    """Refuse to score images whose content the run was trained on."""
    seen = {r.sha256 for r in trained}
    leaked = [r for r in scored if r.sha256 in seen]
    if leaked:
        raise ProvenanceError(
            f"{len(leaked)} of the {len(scored)} {split} images have the same content as "
            f"training images of this run (first: {leaked[0].path}); no {split} metric is "
            "reported on images the model was trained on: train the run again on the current "
            "`make data` split"
        )


def check_images_unchanged(rows: list[ManifestRow], what: str, workers: int = 8) -> None:
    """Every image still exists with the content recorded at training time."""

    def state(row: ManifestRow) -> str:
        try:
            return "ok" if file_sha256(row.path) == row.sha256 else "changed"
        except OSError:
            return "missing"

    with ThreadPoolExecutor(workers) as pool:
        states = list(pool.map(state, rows))
    for kind in ("missing", "changed"):
        bad = [r.path for r, s in zip(rows, states) if s == kind]
        if bad:
            raise ProvenanceError(
                f"{len(bad)} of the {len(rows)} {what} images are {kind} since `make data` "
                f"(first: {bad[0]}): restore them, or run `make data` and train again"
            )


def describe_difference(run: RunData, current: DatasetRecord | None) -> str | None:
    """A sentence saying how the data set's current manifests differ from the run's, or
    None when they are the same."""
    if run.record is None or current is None:
        return None
    if run.record.fingerprint == current.fingerprint:
        return None
    changes = option_changes(run.record.options, current.options)
    if current.files_digest != run.record.files_digest:
        changes.append(f"files {run.record.files} -> {current.files}")
    return ", ".join(changes) or "manifests rebuilt"
