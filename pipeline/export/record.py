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
from typing import Any, TypedDict

from pipeline.files import read_json, write_json
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


class MemoryFigures(TypedDict):
    """The run's memory estimate at a file's precision (one image's inference)."""

    precision: str
    parameter_bytes: int
    inference_bytes: int


class MetadataFigures(TypedDict):
    """What a .tflite's own metadata says, read back from the file."""

    labels: int
    input: str
    output: str
    runtimes: list[str]


class MediaPipeFigures(TypedDict):
    """MediaPipe's ImageClassifier on the same file and the same test photos."""

    runtime: str
    names_classes: bool
    top1_agreement: float
    unknown_agreement: float | None  # its unknown head against this project's flags
    images: int
    latency_ms: float


class UnknownFigures(TypedDict):
    """A file's unknown_score output against the Keras model's detector, on the test split."""

    threshold: float  # the file's own, set on the run's validation photos; in its metadata
    rate: float  # the share of validation photos it flags
    keras_threshold: float  # the run's, for model.keras
    validation_scores: list[float]  # the file's: predict.unknown_rate sets it again from them
    flagged: float  # share of the test photos the file flags
    keras_flagged: float
    flag_agreement: float  # share flagged (or not) alike
    max_score_difference: float


class ModelFigures(TypedDict, total=False):
    """One row of export.json: the Keras model ("keras") or one exported file."""

    file: str
    size_bytes: int
    accuracy: float
    macro_f1: float
    top1_agreement: float  # share of the same top-1 as the Keras model
    max_probability_difference: float
    latency_ms_b1: float
    throughput_b1: float
    latency_ms_b32: float
    throughput_b32: float
    estimate: MemoryFigures | None
    sha256: str  # a .tflite's identity: what verify_exported checks
    labels: list[str]
    image_size: int
    metadata: MetadataFigures
    mediapipe: MediaPipeFigures | None
    unknown: UnknownFigures | None  # None: the file has no unknown_score output


class ExportRecord(TypedDict):
    """export.json, written by make export and read by evaluate's report and by predict."""

    run: str
    image_size: int
    labels: list[str]
    input: str
    output: str
    split: str
    test_images: int
    calibration_images: int
    latency: str
    max_drop: float
    keras: ModelFigures
    variants: dict[str, ModelFigures]  # export.format -> its file's figures
    warnings: list[str]


def write_export_record(folder: Path, record: ExportRecord) -> Path:
    return write_json(folder / EXPORT_JSON, record)


def read_export_record(folder: Path) -> ExportRecord | None:
    """The folder's export.json; None where the run has not been exported."""
    raw = read_json(folder / EXPORT_JSON)
    return raw if isinstance(raw, dict) else None


def file_sha256(path: Path) -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (an InceptionV3 file is 90 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, labels: list[str], image_size: int) -> ModelFigures:
    """The identity export.json keeps for one exported file."""
    return {"sha256": file_sha256(path), "labels": list(labels), "image_size": image_size}


def verify_exported(path: Path, run_dir: Path, labels: list[str], image_size: int) -> ModelFigures:
    """The file's figures in its folder's export.json; ValueError (one line) unless it is
    listed there with its current sha256, the run's labels (same names, same order) and the
    run's image size."""
    fix = f"export this run again with make export RUN={run_dir.name}"
    record_path = path.absolute().parent / EXPORT_JSON
    figures = read_export_record(record_path.parent)
    digest = file_sha256(path)
    listed = [
        v
        for v in (figures["variants"] if figures else {}).values()
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
    return record


def _short(labels: Any, limit: int = 6) -> str:
    if not isinstance(labels, list):
        return repr(labels)
    shown = ", ".join(str(x) for x in labels[:limit])
    more = f", ... ({len(labels)} in all)" if len(labels) > limit else ""
    return f"[{shown}{more}]"
