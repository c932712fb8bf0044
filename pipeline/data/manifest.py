"""Manifests: the CSV files that say which image is in which split, with which label.

One row per usable image; the path points at the user's own file (nothing is copied).
``decoder`` and ``orientation`` come from the image check and tell the input pipeline how
to decode the file so that training, evaluation and prediction see the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.files import read_csv, write_csv, write_json

SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    label_index: int
    sha256: str
    width: int
    height: int
    orientation: int
    decoder: str

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> Path:
    columns = ManifestRow.columns()  # getattr, not astuple(): its deep copy cost seconds
    return write_csv(path, columns, ([getattr(r, c) for c in columns] for r in rows))


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make data` first")
    return [
        ManifestRow(
            path=r["path"],
            label=r["label"],
            label_index=int(r["label_index"]),
            sha256=r["sha256"],
            width=int(r["width"]),
            height=int(r["height"]),
            orientation=int(r["orientation"]),
            decoder=r["decoder"],
        )
        for r in read_csv(path)
    ]


def write_classes(path: str | Path, classes: list[str]) -> Path:
    return write_json(path, classes)


def read_classes(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make data` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(dataset_dir: str | Path, split: str) -> list[ManifestRow]:
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_FILES)}. Received: {split!r}")
    return read_manifest(Path(dataset_dir) / SPLIT_FILES[split])
