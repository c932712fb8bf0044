"""What a data set's source holds, listed once: every candidate file below its class folders,
with its size and modification time taken before any check, and why a file that reads as an
image still cannot be trained on. Shared by the data stage and its Beam twin."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.data.provenance import FileStat
from pipeline.data.sources import Source, SourceError, resolve_source, subfolders
from pipeline.files import GENERATED_MARKER, OwnershipError, generated_dir
from pipeline.images import NOT_UTF8, has_image_extension, is_ignored, is_utf8_path, iter_files


@dataclass
class Candidate:
    path: Path
    label: str | None  # None: not inside a class folder
    given_split: str | None


def list_candidates(source: Source) -> list[Candidate]:
    """Every file below each class folder (any depth), and stray files beside them."""
    found: list[Candidate] = []
    for root, given in source.roots:
        for path in sorted(p for p in root.iterdir() if p.is_file()):
            if has_image_extension(path) and not is_ignored(path):
                found.append(Candidate(path, None, given))
        for class_dir in subfolders(root):
            found.extend(Candidate(p, class_dir.name, given) for p in iter_files(class_dir))
    return found


def _hidden_classes(source: Source) -> list[str]:
    """A note for each folder beside the classes whose name starts with a dot and that holds
    images: hidden folders are never classes, and dropping one without a word loses a class."""
    notes = []
    for root, _ in source.roots:
        for folder in sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()):
            images = sum(has_image_extension(Path(f)) for _, _, fs in os.walk(folder) for f in fs)
            if images:
                notes.append(
                    f"Ignored {folder}/ ({images} image(s)): a folder whose name starts with a "
                    "dot is hidden, never a class; rename it without the dot to use it"
                )
    return notes


def unusable_reason(cand: Candidate) -> str:
    """Why a file that passed the image check still cannot be trained on ('' if it can)."""
    if cand.label is None:
        return "not inside a class folder"
    if not is_utf8_path(cand.path):
        return NOT_UTF8
    return ""


@dataclass
class Listing:
    """A source resolved and listed once: every candidate file, and its size and modification
    time taken before any check (so that an edit during the check shows as a change)."""

    source: Source
    candidates: list[Candidate]
    stats: list[FileStat]


def list_source(cfg: Config, out_dir: Path) -> Listing:
    source = _resolve(cfg, out_dir)
    for note in _hidden_classes(source):
        print(note)
    candidates = list_candidates(source)
    return Listing(source, candidates, [FileStat.of(c.path) for c in candidates])


def _resolve(cfg: Config, out_dir: Path) -> Source:
    """The source, with archives extracted into out_dir; a refused source leaves nothing."""
    created = not out_dir.exists()
    try:
        generated_dir(out_dir)
    except OwnershipError as exc:
        raise OwnershipError(
            f"{exc}. {out_dir}/ is where the pipeline keeps DATASET={cfg.data.dataset}'s "
            f"manifests: to use photos of your own, put them in another folder and give "
            f"DATASET=folder:PATH"
        ) from None
    try:
        return resolve_source(cfg.data.dataset, cfg.paths.data, out_dir)
    except SourceError:
        if created and [p.name for p in out_dir.iterdir()] == [GENERATED_MARKER]:
            shutil.rmtree(out_dir)
        raise
