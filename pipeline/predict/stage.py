"""Classifying a folder of new photos into a CSV (`make predict`): streamed, resumable,
optionally copied into class folders. The model side is ``pipeline.predict.classifier``."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.files import exclusive
from pipeline.images import IMAGE_EXTENSIONS, has_image_extension, iter_files
from pipeline.predict.classifier import (
    Classifier,
    exported_file,
    load_classifier,
    prediction_header,
    read_run,
    run_of_export,
)
from pipeline.predict.partial import PartialRows, csv_order, resume_key
from pipeline.predict.stream import classify_stream
from pipeline.runs import MODEL_FILE, resolve_run


@dataclass
class PredictResult:
    output: Path
    classified: int  # rows of the CSV with status ok
    skipped: int  # rows with a reason
    sorted_into: Path | None = None
    reused: int = 0  # rows kept from an interrupted run (file unchanged)
    read: int = 0  # files this run read and classified or skipped
    images_per_s: float = 0.0  # files read per second after the first batch


def list_input_files(folder: Path, option: str = "IN") -> list[Path]:
    """Every file below ``folder`` (recursively), or a one-line error naming ``option`` when
    it holds no image."""
    if not folder.exists():
        raise FileNotFoundError(f"{option}={folder}: no such folder; give a folder of images")
    if not folder.is_dir():
        raise ValueError(f"{option}={folder} is a file; give the folder that holds the images")
    files = list(iter_files(folder))
    if not any(has_image_extension(p) for p in files):
        found = (
            f"among its {len(files)} file(s)"
            if files
            else "(it is empty, or holds only hidden files and OS debris, which are ignored)"
        )
        raise ValueError(
            f"{option}={folder}: no images found {found}, searched recursively for "
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
    configuration (image size, crop, checks), labels, columns, TTA, the batch size and the
    unknown-photo threshold."""
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
            "unknown": None if clf.unknown is None else [clf.unknown.k, clf.unknown.threshold],
        }
    )


def predict(cfg: Config) -> PredictResult:
    """Classify every image below cfg.predict.input into a CSV sorted by path.

    Streams: rows are saved beside the output as batches finish (pipeline.predict.partial), so
    memory stays flat and a rerun after an interruption classifies only what is missing.
    """
    p = cfg.predict
    if not p.input:
        raise ValueError("Give the folder to classify: make predict IN=path/to/photos")
    folder = Path(p.input).expanduser()
    files = list_input_files(folder)
    output = check_output_path(Path(p.output).expanduser(), "OUT")
    sort_into = p.sort_into and check_output_path(
        Path(p.sort_into).expanduser(), "SORT_INTO", folder=True
    )
    files = sorted(_outside_outputs(files, folder, output, sort_into or None), key=csv_order)
    output.parent.mkdir(parents=True, exist_ok=True)  # now, not after the classifying
    # A second predict to the same OUT is refused: it would resume from the first's partial
    # rows while they are still being written.
    with exclusive(output, "make predict", wait=False):
        return _predict(cfg, folder, files, output, sort_into or None)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _outside_outputs(
    files: list[Path], folder: Path, output: Path, sort_into: Path | None
) -> list[Path]:
    """The input without this run's own outputs: an OUT named like an image inside IN is
    refused (a photo would be overwritten with CSV text), and the copies under a SORT_INTO
    inside IN are left out (a rerun would classify them again), with a message."""
    if has_image_extension(output) and _inside(output, folder):
        raise ValueError(
            f"OUT={output} is an image's name inside IN={folder}: the CSV would overwrite it; "
            "give a .csv path, e.g. OUT=predictions.csv"
        )
    if sort_into is None or not _inside(sort_into, folder):
        return files
    target = sort_into.resolve()
    kept = [f for f in files if not f.resolve().is_relative_to(target)]
    print(
        f"SORT_INTO={sort_into} is inside IN={folder}: its {len(files) - len(kept)} file(s) "
        "are left out of the input"
    )
    return kept


def _predict(
    cfg: Config, folder: Path, files: list[Path], output: Path, sort_into: Path | None
) -> PredictResult:
    p = cfg.predict
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
    clf.set_unknown_rate(p.unknown_rate)
    if not clf.unknown:
        print(clf.without_unknown_reason())
    k = min(p.top_k, len(clf.labels))
    header = prediction_header(k)
    # The run's own batch size (input.batch_size, 32 by default) unless predict.batch_size
    # says otherwise. On 2 idle CPU cores MobileNet 0.25's forward pass ran as fast at 16 as
    # at 32 (within noise, two runs) and slower at 64: benchmarks/results/predict.json.
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
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    if not classified:
        raise ValueError(
            f"IN={folder}: none of the {skipped} file(s) is a readable image ({why}"
            f"; each file's reason is in {output}); give a folder of photos "
            "(JPEG, PNG, GIF, BMP or WebP), or replace the damaged files"
        )
    result = PredictResult(
        output, classified, skipped, None, reused, counts.read, counts.steady_rate
    )
    rate = f" at {counts.steady_rate:.0f} images/s after start-up" if counts.steady_rate else ""
    why = f" ({why})" if why else ""
    print(f"Classified {classified} images{rate}, skipped {skipped}{why}: {output}")
    if sort_into:
        result.sorted_into = sort_into
        with open(output, newline="", encoding="utf-8") as fh:
            _copy_into(csv.DictReader(fh), result.sorted_into)
        print(f"Copied the classified images into {result.sorted_into}/<class>/")
    return result
