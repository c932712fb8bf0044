"""`make predict` on Beam: check, decode, classify in batches, one CSV equal to the local one.

Each worker runs the local path's pieces: ``check_image`` (with the run's data.min_side and
data.max_pixels), then Beam's ``RunInference`` with ``ClassifierHandler``, a model handler
that loads the run once per worker process (``pipeline.predict.classifier.load_classifier``: a run's
model.keras or an exported .tflite) and turns each batch into probabilities through
``pipeline.inputs.build_eval_dataset`` (the same decoding, centre crop and preprocessing as
evaluation) and the classifier's ``predict_batch``, mirrored images averaged in with
input.tta=flip. The same pass gives the run's unknown score (``Classifier.predict_scored``),
flagged at predict.unknown_rate's threshold. Records have `make predict`'s columns; the merge
sorts them by path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.beam import require_beam
from pipeline.beam.shards import SHARD_SUFFIX, csv_record, merge_shards, shard_prefix
from pipeline.config import Config
from pipeline.images import ImageCheck, check_image, check_named, text_path
from pipeline.predict.unknown import UNKNOWN_COLUMNS, UNKNOWN_FILE, unknown_cells

beam = require_beam()
BATCHES_PER_CALL = 8

from apache_beam.ml.inference.base import (  # noqa: E402
    ModelHandler,
    PredictionResult,
    RunInference,
)


def classifier_outputs(
    clf: Any, checks: Sequence[ImageCheck], tta: str, batch_size: int
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Probabilities (float64, one row per check) of checked images through the evaluation
    pipeline in model batches of ``batch_size``, as ``Classifier.scored`` computes them
    (mirrored images averaged in with tta=flip), and each image's two unknown columns."""
    from pipeline.predict.classifier import rows_from_checks

    ds = clf.eval_dataset(rows_from_checks(list(checks)), batch_size)
    outputs, scores = [], []
    for images in ds:
        x = images.numpy()
        probs, score = clf.predict_scored(x)
        if tta == "flip":
            probs = (probs + np.asarray(clf.predict_batch(x[:, :, ::-1]))) / 2
        outputs.append(probs)
        scores.extend([None] * len(probs) if score is None else score)
    cells = [unknown_cells(clf.unknown, score) for score in scores]
    return np.concatenate(outputs).astype(np.float64), cells


class ClassifierHandler(ModelHandler):
    """RunInference's model handler for a trained run (or its exported .tflite file)."""

    def __init__(
        self,
        source: str,
        models_dir: str,
        batch_size: int,
        tta: str = "none",
        unknown_rate: float | None = None,
    ):
        # Beam hands over up to BATCHES_PER_CALL model batches at once: one input pipeline
        # is built per call (about half a second), the model still sees the run's batch
        # size, as on the local path (a call's last batch may be smaller).
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size * BATCHES_PER_CALL)
        self._source, self._models_dir, self._tta = source, models_dir, tta
        self._batch_size, self._unknown_rate = batch_size, unknown_rate

    def load_model(self) -> Any:
        from pipeline.predict.classifier import load_classifier
        from pipeline.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        clf = load_classifier(self._source, self._models_dir)
        if self._unknown_rate is not None and clf.unknown is not None:
            clf.unknown = clf.unknown.with_rate(self._unknown_rate)  # the main process said so
        return clf

    def run_inference(
        self, batch: Sequence[ImageCheck], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        probs, cells = classifier_outputs(model, batch, self._tta, self._batch_size)
        return [PredictionResult(check, (p, c)) for check, p, c in zip(batch, probs, cells)]


def checked(item: bytes, min_side: int, max_pixels: int) -> ImageCheck:
    """A path (bytes: Beam's string coder cannot carry a name that is not UTF-8) checked."""
    return check_named(os.fsdecode(item), check_image, min_side, max_pixels)


def usable(check: ImageCheck, partitions: int) -> int:
    return 0 if check.status == "ok" else 1


def predicted_record(result: PredictionResult, labels: list[str], top_k: int) -> str:
    """One CSV record of `make predict` (``classify_checked``'s row) for a classified image."""
    check, (p, cells) = result.example, result.inference
    order = np.argsort(-p, kind="stable")[:top_k]
    values: list[Any] = [text_path(check.path), check.status, labels[order[0]], float(p[order[0]])]
    for j in order:
        values += [labels[j], float(p[j])]
    return csv_record([*values, *(cells[c] for c in UNKNOWN_COLUMNS), check.reason])


def skipped_record(check: ImageCheck, top_k: int) -> str:
    blanks = [""] * (2 * top_k + len(UNKNOWN_COLUMNS))
    row = [text_path(check.path), check.status, "", "", *blanks, check.reason]
    return csv_record(row)


def classify_files(
    files: list[bytes],
    handler: ClassifierHandler,
    labels: list[str],
    top_k: int,
    limits: tuple[int, int],
    prefix: str,
    argv: list[str],
) -> None:
    """Run the Beam pipeline: files -> checks -> RunInference -> CSV shards under ``prefix``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(argv)) as p:
        checks = (
            p
            | "List" >> beam.Create(files)
            | "Spread" >> beam.Reshuffle()  # Create makes one bundle: give every worker a share
            | "Check" >> beam.Map(checked, *limits)
        )
        ok, bad = checks | "Usable" >> beam.Partition(usable, 2)
        classified = (
            ok
            | "Classify" >> RunInference(handler)
            | "Format" >> beam.Map(predicted_record, labels, top_k)
        )
        skipped = bad | "Skipped" >> beam.Map(skipped_record, top_k)
        _ = (
            (classified, skipped)
            | "Both" >> beam.Flatten()
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=SHARD_SUFFIX)
        )


@dataclass
class BeamPredictRun:
    output: Path
    classified: int
    skipped: int
    shards: int
    seconds: float


def run_predict(
    cfg: Config, output: Path | None, shards: str | None, argv: list[str]
) -> BeamPredictRun:
    """Classify every image below cfg.predict.input on Beam into one CSV sorted by path."""
    from pipeline.predict.classifier import prediction_header, read_run, run_of_export
    from pipeline.predict.stage import check_output_path, list_input_files
    from pipeline.runs import resolve_run

    start = time.perf_counter()
    p = cfg.predict
    if not p.input:
        raise ValueError("Give the folder to classify: predict.input=path/to/photos (IN=)")
    if p.sort_into:
        raise ValueError("predict.sort_into is not supported on Beam; use make predict for it")
    files = list_input_files(Path(p.input).expanduser())
    output = check_output_path(output or Path(p.output).expanduser(), "OUT")
    if p.model:
        run_dir, run_cfg, labels = read_run(run_of_export(Path(p.model).expanduser()))
        if (
            cfg.eval.run
            and resolve_run(cfg.paths.models, cfg.eval.run).resolve() != run_dir.resolve()
        ):
            raise ValueError(f"RUN={cfg.eval.run} and MODEL={p.model} name different runs")
    else:
        run_dir, run_cfg, labels = read_run(cfg.eval.run, cfg.paths.models)
    source = str(Path(p.model).expanduser().absolute() if p.model else run_dir.absolute())
    k = min(p.top_k, len(labels))
    header = prediction_header(k)
    handler = ClassifierHandler(
        source, str(cfg.paths.models), run_cfg.input.batch_size, cfg.input.tta, p.unknown_rate
    )
    prefix = shard_prefix(shards or str(output.absolute().parent / ".beam-shards"), "predict")
    print(f"Classifying {len(files)} files under {p.input} with {source} on Beam")
    if p.model or not (run_dir / UNKNOWN_FILE).is_file():
        print(
            "unknown_score and unknown are left empty: "
            + (
                "exported files do not carry the feature output yet"
                if p.model
                else f"{run_dir.name} has no {UNKNOWN_FILE} (trained before the unknown-photo "
                "detector)"
            )
        )
    limits = (run_cfg.data.min_side, run_cfg.data.max_pixels)
    classify_files([os.fsencode(f) for f in files], handler, labels, k, limits, prefix, argv)
    written, rows, count = merge_shards(prefix, output, header, lambda r: r[0])
    if len(rows) != len(files):
        raise RuntimeError(f"the Beam pipeline returned {len(rows)} rows for {len(files)} files")
    skipped = sum(r[1] != "ok" for r in rows)
    if skipped == len(rows):  # as make predict: the CSV holds each file's reason
        raise ValueError(
            f"IN={p.input}: none of the {len(rows)} file(s) is a readable image (each file's "
            f"reason is in {written}); give a folder of photos (JPEG, PNG, GIF, BMP or WebP)"
        )
    result = BeamPredictRun(
        written, len(rows) - skipped, skipped, count, time.perf_counter() - start
    )
    print(
        f"Classified {result.classified} images, skipped {skipped}, in "
        f"{result.seconds:.1f} s ({count} shards merged): {written}"
    )
    return result
