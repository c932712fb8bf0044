"""Classifying new photos (`make predict`), and the small API behind it and `make evaluate`.

    from pipeline.predict import load_classifier
    clf = load_classifier("flowers-inception_v3-20261122-101500")   # or () for the newest
    clf.classify(["photo.jpg"])[0]["predicted"]                     # -> 'tulips'

Every image goes through the same check, decoding and preprocessing as evaluation
(``pipeline.inputs.build_eval_dataset``), so a photo gets the same answer in both. An
exported file works too, ``load_classifier("models/<run>/export/model_int8.tflite")``: it
takes the same crops as raw pixels, its preprocessing being inside.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, load_config
from pipeline.images import (
    IMAGE_EXTENSIONS,
    ImageCheck,
    check_images,
    has_image_extension,
    iter_files,
)
from pipeline.manifest import ManifestRow
from pipeline.partial import PartialRows, resume_key
from pipeline.predict_stream import classify_stream, prediction_columns
from pipeline.runs import CONFIG_FILE, LABELS_FILE, MODEL_FILE, resolve_run
from pipeline.tflite import TFLITE_SUFFIX


@dataclass
class Classifier:
    """A trained run, ready to classify files: its model, labels and input configuration.

    ``predict_batch`` maps a batch of evaluation crops to probabilities; they come
    preprocessed for the Keras model, as raw pixels (``raw_pixels``) for an exported file.
    """

    run_dir: Path
    cfg: Config
    labels: list[str]
    model: Any = field(repr=False)  # keras.Model, or a pipeline.tflite.TFLiteModel
    predict_batch: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    raw_pixels: bool = False

    def probabilities(
        self, rows: list[ManifestRow], batch_size: int | None = None, tta: str = "none"
    ) -> np.ndarray:
        """Softmax outputs for checked rows, in row order, through the evaluation pipeline.

        ``tta="flip"`` averages each image's probabilities with its mirror image's (twice
        the model's work). Shows a progress bar on stderr when that is a terminal;
        otherwise (a log) one line.
        """
        from tqdm import tqdm

        from pipeline.inputs import build_eval_dataset

        if not rows:
            return np.zeros((0, len(self.labels)), np.float32)
        batch = batch_size or self.cfg.input.batch_size
        ds = build_eval_dataset(
            rows, self.cfg, None, batch_size=batch, apply_preprocessing=not self.raw_pixels
        )
        bar = tqdm(
            total=len(rows),
            desc="Running the model",
            unit="img",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            leave=True,
        )
        if bar.disable:
            batches = math.ceil(len(rows) / batch)
            print(
                f"Running the model on {len(rows)} images "
                f"({batches} batch{'es' if batches != 1 else ''} of {batch})"
            )
        outputs = []
        with bar:
            for batch_images in ds:
                x = batch_images.numpy()
                probs = np.asarray(self.predict_batch(x))
                if tta == "flip":
                    mirrored = x[:, :, ::-1]  # (batch, height, width, channels)
                    probs = (probs + np.asarray(self.predict_batch(mirrored))) / 2
                outputs.append(probs)
                bar.update(len(outputs[-1]))
        return np.concatenate(outputs).astype(np.float64)

    def classify(
        self, paths: list[str | Path], top_k: int = 3, tta: str = "none"
    ) -> list[dict[str, Any]]:
        """One row per path, like the CSV: unreadable files come back with their reason."""
        checks = check_images(
            paths, self.cfg.data.min_side, self.cfg.data.max_pixels, progress=False
        )
        return classify_checked(self, checks, top_k, tta)


def load_classifier(run: str | Path = "", models_dir: str | Path = "models") -> Classifier:
    """A run by name or folder (newest when empty), or an exported models/<run>/export/*.tflite."""
    if str(run).endswith(TFLITE_SUFFIX):
        return _load_exported(Path(run))
    run_dir, cfg, labels = read_run(run, models_dir)
    model = _load_model(run_dir / MODEL_FILE)
    outputs = model.output_shape[-1]
    if outputs != len(labels):
        raise ValueError(
            f"{run_dir / LABELS_FILE} lists {len(labels)} classes but {run_dir / MODEL_FILE} "
            f"outputs {outputs}: they are not from the same run. Restore the run's own "
            f"{LABELS_FILE} (its class names, in output order) or retrain the run"
        )
    return Classifier(run_dir, cfg, labels, model, model.predict_on_batch)


def run_of_export(path: Path) -> Path:
    """The run an exported file belongs to: models/<run>/export/<file> -> models/<run>."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MODEL={path}: no such file; export the run first: make export RUN=<run> "
            "(it writes models/<run>/export/model_*.tflite)"
        )
    run_dir = path.absolute().parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"MODEL={path}: no {CONFIG_FILE} in {run_dir}; keep the file where `make export` "
            "wrote it, models/<run>/export/, inside its run folder"
        )
    return run_dir


def exported_file(run_dir: Path, fmt: str) -> Path:
    """What `make predict RUN=<run> FORMAT=<fmt>` classifies with: the run itself for the
    default FORMAT (all), else that format's file under models/<run>/export/."""
    from pipeline.export_record import EXPORT_DIR, VARIANT_FILES

    if fmt == "all":
        return run_dir
    if not VARIANT_FILES[fmt].endswith(TFLITE_SUFFIX):
        raise ValueError(
            f"FORMAT={fmt}: predict runs a .tflite file or the run itself; give FORMAT=tflite, "
            "tflite-fp16 or tflite-int8, or no FORMAT for the run's Keras model"
        )
    path = run_dir / EXPORT_DIR / VARIANT_FILES[fmt]
    if not path.is_file():
        raise FileNotFoundError(
            f"FORMAT={fmt}: {path} does not exist; export it first: make export "
            f"RUN={run_dir.name} FORMAT={fmt}"
        )
    return path


def _load_exported(path: Path) -> Classifier:
    """An exported .tflite file, checked against its run: image size and class count, then
    export.json's record of it (its sha256 and the labels it was exported with)."""
    from pipeline.export_record import verify_exported
    from pipeline.tflite import TFLiteModel

    run_dir, cfg, labels = read_run(run_of_export(path))
    model = TFLiteModel(path)
    size = cfg.image_size
    if model.input_shape != (size, size, 3):
        h, w, c = model.input_shape
        raise ValueError(
            f"{path} takes {h}x{w}x{c} images but its run {run_dir.name} was trained at "
            f"{size}x{size}x3: it was exported from another run; export this one again with "
            f"make export RUN={run_dir.name}"
        )
    if model.outputs != len(labels):
        raise ValueError(
            f"{path} outputs {model.outputs} classes but {run_dir / LABELS_FILE} lists "
            f"{len(labels)}: it was exported from another run; export this one again with "
            f"make export RUN={run_dir.name}"
        )
    verify_exported(path, run_dir, labels, size)  # the same shape is not the same labels
    return Classifier(run_dir, cfg, labels, model, model, raw_pixels=True)


def read_run(run: str | Path = "", models_dir: str | Path = "models") -> tuple[Path, Config, list]:
    """A run's folder, configuration and labels: everything but the model (fast, no TF)."""
    run_dir = resolve_run(models_dir, str(run))
    cfg = load_config(run_dir / CONFIG_FILE)
    path = run_dir / LABELS_FILE
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
        names = isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
        problem = "" if names else "is not a list of class names"
    except FileNotFoundError:
        problem = "is missing"
    except json.JSONDecodeError as exc:
        problem = f"is not valid JSON ({exc.msg}, line {exc.lineno})"
    if problem:
        raise ValueError(
            f"{path} {problem}; restore the run's own {LABELS_FILE} or retrain the run"
        )
    return run_dir, cfg, labels


def _load_model(path: Path) -> Any:
    """keras.saving.load_model, or one line saying the file is damaged (Keras says a
    truncated .keras file is "File not found", although it is there)."""
    import zipfile

    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # anything wrong inside the file: the message says what
        if not zipfile.is_zipfile(path):
            cause = "not a complete .keras zip archive"
        else:
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())
            cause = cause if len(cause) <= 200 else cause[:197] + "..."
        raise ValueError(
            f"{path} is not a readable Keras model (truncated or corrupt: {cause}); "
            "retrain the run or restore the file"
        ) from None


def rows_from_checks(checks: list[ImageCheck]) -> list[ManifestRow]:
    return [
        ManifestRow(c.path, "", -1, c.sha256, c.width, c.height, c.orientation, c.decoder)
        for c in checks
        if c.status == "ok"
    ]


def top_k_columns(k: int) -> list[str]:
    return [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_probability")]


def classify_checked(
    clf: Classifier, checks: list[ImageCheck], top_k: int, tta: str = "none"
) -> list[dict]:
    top_k = min(top_k, len(clf.labels))
    ok = [c for c in checks if c.status == "ok"]
    probs = clf.probabilities(rows_from_checks(ok), tta=tta)
    by_path = {c.path: p for c, p in zip(ok, probs)}
    out = []
    for check in checks:
        row: dict[str, Any] = {"path": check.path, "status": check.status, "reason": check.reason}
        p = by_path.get(check.path)
        if p is not None:
            row.update(prediction_columns(clf.labels, p, top_k))
        out.append(row)
    return sorted(out, key=lambda r: r["path"])


@dataclass
class PredictResult:
    output: Path
    classified: int  # rows of the CSV with status ok
    skipped: int  # rows with a reason
    sorted_into: Path | None = None
    reused: int = 0  # rows kept from an interrupted run (file unchanged)
    read: int = 0  # files this run read and classified or skipped
    images_per_s: float = 0.0  # files read per second after the first batch


def list_input_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(f"IN={folder}: no such folder; give a folder of images")
    if not folder.is_dir():
        raise ValueError(f"IN={folder} is a file; give the folder that holds the images")
    files = list(iter_files(folder))
    if not any(has_image_extension(p) for p in files):
        found = (
            f"among its {len(files)} file(s)"
            if files
            else "(it is empty, or holds only hidden files and OS debris, which are ignored)"
        )
        raise ValueError(
            f"IN={folder}: no images found {found}, searched recursively for "
            f"{'/'.join(sorted(IMAGE_EXTENSIONS))}; give the folder that holds the photos"
        )
    return files


def check_output_path(path: Path, option: str, folder: bool = False) -> Path:
    """Fail now, not after classifying everything, when ``path`` cannot be written: a CSV
    that names a folder, or a path below a file. Returns the path."""
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option}={path} is a file; give a folder to copy the images into")
    if not folder and path.is_dir():
        raise ValueError(
            f"{option}={path} is a folder; give a file name for the CSV, "
            f"e.g. {option}={path / 'predictions.csv'}"
        )
    existing = next(a for a in (path.absolute(), *path.absolute().parents) if a.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise ValueError(
            f"{option}={path}: {existing} is a file, so no folder can be made there; "
            "give a path in a folder"
        )
    return path


def _copy_into(rows: Iterable[dict], destination: Path) -> None:
    """Copy (never move) each classified image into destination/<predicted class>/."""
    for row in rows:
        if row["status"] != "ok":
            continue
        src = Path(row["path"])
        target = destination / row["predicted"] / src.name
        n = 1
        while target.exists():
            if target.read_bytes() == src.read_bytes():
                break
            target = target.with_name(f"{src.stem}-{n}{src.suffix}")
            n += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            shutil.copy2(src, partial)
            partial.replace(target)


def partial_key(clf: Classifier, source: Path, header: list[str], tta: str, batch: int) -> str:
    """What decides a row's content: the model file (and its size and time), the run's
    configuration (image size, crop, checks), labels, columns, TTA and the batch size."""
    model_file = source if source.is_file() else clf.run_dir / MODEL_FILE
    st = model_file.stat()
    return resume_key(
        {
            "version": 1,
            "model": [str(model_file.resolve()), st.st_size, st.st_mtime_ns],
            "config": asdict(clf.cfg),
            "labels": clf.labels,
            "header": header,
            "tta": tta,
            "batch": batch,
        }
    )


def predict(cfg: Config) -> PredictResult:
    """Classify every image below cfg.predict.input into a CSV sorted by path.

    Streams: rows are saved beside the output as batches finish (pipeline.partial), so
    memory stays flat and a rerun after an interruption classifies only what is missing.
    """
    p = cfg.predict
    if not p.input:
        raise ValueError("Give the folder to classify: make predict IN=path/to/photos")
    folder = Path(p.input).expanduser()
    files = sorted(list_input_files(folder), key=str)  # the CSV's order
    output = check_output_path(Path(p.output).expanduser(), "OUT")
    sort_into = p.sort_into and check_output_path(
        Path(p.sort_into).expanduser(), "SORT_INTO", folder=True
    )
    if p.model:
        run_dir, _, _ = read_run(run_of_export(Path(p.model).expanduser()))
        if (
            cfg.eval.run
            and resolve_run(cfg.paths.models, cfg.eval.run).resolve() != run_dir.resolve()
        ):
            raise ValueError(
                f"RUN={cfg.eval.run} and MODEL={p.model} (exported from {run_dir}) name "
                "different runs; give one of them"
            )
    else:
        run_dir, _, _ = read_run(cfg.eval.run, cfg.paths.models)
    source = Path(p.model).expanduser() if p.model else exported_file(run_dir, cfg.export.format)
    print(f"Classifying {len(files)} files under {p.input} with {source}")
    clf = load_classifier(source, cfg.paths.models)
    k = min(p.top_k, len(clf.labels))
    header = ["path", "status", "predicted", "probability", *top_k_columns(k), "reason"]
    # The run's own batch size (input.batch_size, 32 by default) unless predict.batch_size
    # says otherwise. On 2 shared CPU cores MobileNet 0.25's forward pass ran faster at 16
    # (206 images/s, against 119 at 32 and 91 at 64: benchmarks/results/predict.json),
    # but predict's own rate at 16 is not measured yet, so the default is not changed.
    batch = p.batch_size or clf.cfg.input.batch_size
    saved = PartialRows(output, partial_key(clf, source, header, cfg.input.tta, batch), header)
    for stale in saved.stale():
        print(f"Discarding {stale.name}: left by a run with another model or options")
    todo, reused = saved.start(files, batch)
    if reused:
        print(
            f"Resuming: {reused} rows kept from an interrupted run (files unchanged), "
            f"{len(files) - reused} files to classify"
        )
    try:
        counts = classify_stream(clf, files, todo, header, saved.append, k, cfg.input.tta, batch)
    finally:
        saved.close()
    reasons = saved.finish()
    classified = reasons.pop("ok", 0)
    skipped = sum(reasons.values())
    if not classified:
        raise ValueError(
            f"IN={folder}: none of the {skipped} file(s) is a readable image ("
            + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            + f"; each file's reason is in {output}); give a folder of photos "
            "(JPEG, PNG, GIF, BMP or WebP), or replace the damaged files"
        )
    result = PredictResult(
        output, classified, skipped, None, reused, counts.read, counts.steady_rate
    )
    rate = f" ({counts.steady_rate:.0f} images/s after start-up)" if counts.steady_rate else ""
    print(f"Classified {classified} images, skipped {skipped} unreadable{rate}: {output}")
    if sort_into:
        result.sorted_into = sort_into
        with open(output, newline="", encoding="utf-8") as fh:
            _copy_into(csv.DictReader(fh), result.sorted_into)
        print(f"Copied the classified images into {result.sorted_into}/<class>/")
    return result
