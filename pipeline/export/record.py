"""What export.json vouches for: each exported file's sha256, labels and input size, and the
check that a .tflite about to classify is one `make export` wrote for this very run.

A TFLite file holds no class names: a file copied from another run with the same image
size and class count would load and answer in the wrong labels. So the export stage
records, per file, the digest of its bytes and the labels (and size) it was exported with;
``verify_exported`` refuses, in one line naming the cause and the fix, a file that is not
listed, has changed since, or whose labels are not the run's labels.json. No TensorFlow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.files import read_json
from pipeline.runs import LABELS_FILE

EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
# export.format -> the file (or folder) it writes under models/<run>/export/.
VARIANT_FILES = {
    "tflite": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "saved_model": "saved_model",
}


def file_sha256(path: Path) -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (an InceptionV3 file is 90 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, labels: list[str], image_size: int) -> dict[str, Any]:
    """The identity export.json keeps for one exported file."""
    return {"sha256": file_sha256(path), "labels": list(labels), "image_size": image_size}


def verify_exported(path: Path, run_dir: Path, labels: list[str], image_size: int) -> None:
    """Raise ValueError (one line) unless ``path`` is listed in its folder's export.json with
    its current sha256, the run's labels (same names, same order) and the run's image size."""
    fix = f"export this run again with make export RUN={run_dir.name}"
    record_path = path.absolute().parent / EXPORT_JSON
    figures = read_json(record_path) or {}
    digest = file_sha256(path)
    listed = [
        v
        for v in (figures.get("variants") or {}).values()
        if isinstance(v, dict) and v.get("file") == path.name and v.get("sha256")
    ]
    if not listed:
        raise ValueError(
            f"{path} is not listed in {record_path}, so nothing vouches for its labels (a file "
            f"copied from another run, or exported before files were recorded): {fix}"
        )
    record = listed[0]
    if record.get("sha256") != digest:
        raise ValueError(
            f"{path} is not the file {record_path} records (sha256 {digest[:12]}... instead of "
            f"{str(record.get('sha256'))[:12]}...): it was replaced or copied from another run; "
            f"{fix}"
        )
    if record.get("labels") != labels:
        raise ValueError(
            f"{path} was exported with the labels {_short(record.get('labels'))} but "
            f"{run_dir / LABELS_FILE} lists {_short(labels)}: its outputs would be named "
            f"wrongly; restore the run's own {LABELS_FILE}, or {fix}"
        )
    if record.get("image_size") != image_size:
        raise ValueError(
            f"{path} was exported at {record.get('image_size')} px but its run {run_dir.name} "
            f"is configured at {image_size} px: {fix}"
        )


def _short(labels: Any, limit: int = 6) -> str:
    if not isinstance(labels, list):
        return repr(labels)
    shown = ", ".join(str(x) for x in labels[:limit])
    more = f", ... ({len(labels)} in all)" if len(labels) > limit else ""
    return f"[{shown}{more}]"
