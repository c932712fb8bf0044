"""The evaluate stage (`make evaluate`): metrics, figures and one HTML report for a run.

Public entry: ``evaluate(cfg)``. Everything is computed from one array of predicted
probabilities on the chosen split, so every number and figure agrees with the others.
Outputs go to reports/<run>/ (written atomically); index.html gathers them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data.manifest import ManifestRow
from pipeline.data.provenance import (
    RUN_DATA_DIR,
    ProvenanceError,
    check_images_unchanged,
    check_no_leak,
    describe_difference,
    load_run_data,
    read_data_summary,
    read_record,
)
from pipeline.evaluate.calibration import calibration_scores
from pipeline.evaluate.metrics import (
    BaselineComparison,
    Metrics,
    UnknownScores,
    classification_metrics,
    confused_pairs,
    worst_mistakes,
)
from pipeline.evaluate.report import EvalFigures, EvalReport, RunRecords, render_report
from pipeline.export.record import EXPORT_DIR, read_export_record
from pipeline.files import atomic_write_text, exclusive, generated_dir, write_csv, write_json
from pipeline.images import check_images
from pipeline.memory.record import RunMemory
from pipeline.predict.classifier import Classifier, load_classifier, rows_from_checks
from pipeline.predict.stage import list_input_files
from pipeline.predict.unknown import unknown_separation
from pipeline.review.stage import review_page
from pipeline.runs import CURVES_FILE
from pipeline.summary import TrainSummary, read_summary

METRICS_FILE = "metrics.json"
PER_CLASS_CSV = "per_class.csv"
PER_CLASS_MD = "per_class.md"
PREDICTIONS_CSV = "predictions.csv"
REPORT_FILE = "index.html"


@dataclass
class EvalResult:
    report_dir: Path
    metrics: Metrics  # metrics.json, without the memory estimate
    figures: EvalFigures
    files: dict[str, Path] = field(default_factory=dict)  # every file written, by name


def evaluate(cfg: Config) -> EvalResult:
    """Evaluate the run cfg.eval.run (newest if empty) on cfg.eval.split: the split the run
    recorded when it was trained, never the data stage's current one."""
    other = cfg.eval.unknown_photos
    other_files = list_input_files(Path(other).expanduser(), "eval.unknown_photos") if other else []
    clf = load_classifier(cfg.eval.run, cfg.paths.models)
    split = cfg.eval.split
    rows = scored_rows(clf, split)
    out = generated_dir(Path(cfg.paths.reports) / clf.run_dir.name)
    tta = cfg.input.tta
    flip = ", each averaged with its mirror image (input.tta=flip)" if tta == "flip" else ""
    print(f"Evaluating {clf.run_dir} on the {split} split ({len(rows)} images{flip})")
    probs, unknown_scores = clf.scored(rows, tta=tta)
    y_true = np.array([r.label_index for r in rows])
    metrics = classification_metrics(y_true, probs, clf.labels, cfg.eval.top_k)
    metrics.update({"run": clf.run_dir.name, "split": split, "tta": tta})
    metrics["unknown"] = _unknown_scores(clf, unknown_scores, other or None, other_files)
    # One writer of the run's report folder at a time: a second evaluate, or an export
    # adding its table to index.html, waits rather than mixing its files with these.
    with exclusive(out, f"make evaluate RUN={clf.run_dir.name}", wait=True):
        records = _run_records(clf, out)
        metrics["baseline"] = baseline_comparison(records.training, split, metrics)
        calibration = records.training.calibration if records.training else None
        temperature = calibration.temperature if calibration and not calibration.skipped else None
        metrics["calibration"] = calibration_scores(y_true, probs, temperature)
        files = _write_tables(out, metrics, rows, probs, clf.labels)
        figures = _draw_figures(out, metrics, y_true, probs, rows, clf, cfg.eval.gallery_size)
        files.update(figures.files())
        report = EvalReport(metrics, figures, records, clf.cfg, clf.run_dir)
        files["report"] = _write_report(out, report)
        memory = records.memory.estimate_json()
        files["metrics"] = write_json(out / METRICS_FILE, {**metrics, "memory": memory})
    _print_summary(metrics, out)
    return EvalResult(out, metrics, figures, files)


def _unknown_scores(
    clf: Classifier, split_scores, other: str | None, other_files: list[Path]
) -> UnknownScores | None:
    """The unknown-photo detector on the split and on eval.unknown_photos' photos (checked
    as `make predict` checks them); None for a run without a detector."""
    if clf.unknown is None:
        print(f"note: {clf.without_unknown_reason()}")
        return None
    other_scores = None
    if other:
        limits = (clf.cfg.data.min_side, clf.cfg.data.max_pixels)
        checks = check_images(other_files, *limits, progress=False)
        print(f"Scoring {len(checks)} files under eval.unknown_photos={other} as unknown photos")
        _, other_scores = clf.scored(rows_from_checks(checks))
    return unknown_separation(clf.unknown, split_scores, other_scores, other)


def scored_rows(clf: Classifier, split: str) -> list[ManifestRow]:
    """The run's own recorded rows of ``split``, after checking they can be scored honestly:
    the same classes as the model, no image whose content was trained on, every image still
    there and unchanged. Says so when the data stage's manifests have moved on since."""
    run_data = load_run_data(clf.run_dir)
    if run_data.classes != clf.labels:
        raise ProvenanceError(
            f"{clf.run_dir}: the recorded split's classes ({len(run_data.classes)}) differ from "
            f"the model's labels ({len(clf.labels)}); the run folder was altered: train it again"
        )
    rows = run_data.rows(split)
    trained = run_data.rows("train") + (run_data.rows("val") if split == "test" else [])
    check_no_leak(rows, trained, split)
    check_images_unchanged(rows, split)
    change = describe_difference(run_data, read_record(clf.cfg.dataset_dir()))
    if change:
        print(
            f"note: the data set's manifests changed since this run was trained ({change}); "
            f"scoring the run's own {split} split as recorded in {run_data.folder}/"
        )
    return rows


def per_class_markdown(metrics: Metrics) -> str:
    lines = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for c in metrics["per_class"]:
        lines.append(
            f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | "
            f"{c['f1']:.4f} | {c['support']} |"
        )
    lines.append(
        f"| **macro average** | {metrics['macro_precision']:.4f} | "
        f"{metrics['macro_recall']:.4f} | {metrics['macro_f1']:.4f} | "
        f"{metrics['images']} |"
    )
    return "\n".join(lines) + "\n"


def _write_tables(out: Path, metrics: Metrics, rows, probs, labels) -> dict[str, Path]:
    files = {}
    columns = ["class", "precision", "recall", "f1", "support", "roc_auc", "average_precision"]
    files["per_class_csv"] = write_csv(
        out / PER_CLASS_CSV, columns, ([c[k] for k in columns] for c in metrics["per_class"])
    )
    files["per_class_md"] = atomic_write_text(out / PER_CLASS_MD, per_class_markdown(metrics))
    for key, name in (
        ("confusion", "confusion_counts.csv"),
        ("confusion_normalised", "confusion_normalised.csv"),
    ):
        files[f"{key}_csv"] = write_csv(
            out / name,
            ["true \\ predicted", *labels],
            ([labels[i], *row] for i, row in enumerate(metrics[key])),
        )
    predicted = probs.argmax(axis=1)
    files["predictions"] = write_csv(
        out / PREDICTIONS_CSV,
        ["path", "true", "predicted", "probability", "correct"],
        (
            [r.path, r.label, labels[p], f"{probs[i, p]:.6f}", int(p == r.label_index)]
            for i, (r, p) in enumerate(zip(rows, predicted))
        ),
    )
    return files


def _eval_views(clf: Classifier, rows) -> np.ndarray:
    """The images as the model saw them (centre crop, before preprocessing)."""
    ds = clf.eval_dataset(rows, preprocessed=False)
    return np.concatenate([batch.numpy() for batch in ds])


def _draw_figures(out, metrics: Metrics, y_true, probs, rows, clf, gallery_size) -> EvalFigures:
    """Every figure of the report; adds the worst mistakes and confused pairs it shows to
    ``metrics``."""
    from pipeline.evaluate.metrics import one_vs_rest_curves
    from pipeline.plots import (
        plot_confusion,
        plot_image_grid,
        plot_one_vs_rest,
        plot_reliability,
    )

    labels = clf.labels
    confusion = np.array(metrics["confusion"])
    counts = plot_confusion(confusion, labels, out / "confusion_counts.png", normalised=False)
    normalised = plot_confusion(
        np.array(metrics["confusion_normalised"]),
        labels,
        out / "confusion_normalised.png",
        normalised=True,
    )
    curves = one_vs_rest_curves(y_true, probs)
    roc = plot_one_vs_rest(curves, labels, out / "roc.png", "roc")
    pr = plot_one_vs_rest(curves, labels, out / "precision_recall.png", "pr")
    calibration = plot_reliability(
        metrics["reliability"], metrics["expected_calibration_error"], out / "reliability.png"
    )
    before = metrics.get("calibration")
    uncalibrated = before and plot_reliability(
        before["reliability_before"],
        before["ece_before"],
        out / "reliability_uncalibrated.png",
        title="Reliability before temperature scaling",
    )
    predicted = probs.argmax(axis=1)
    worst = worst_mistakes(y_true, probs, gallery_size)
    metrics["worst_mistakes"] = [
        {
            "path": rows[i].path,
            "true": labels[y_true[i]],
            "predicted": labels[predicted[i]],
            "probability": float(probs[i, predicted[i]]),
        }
        for i in worst
    ]
    mistakes = None
    if worst:
        views = _eval_views(clf, [rows[i] for i in worst])
        titles = [
            f"true {m['true']}\npredicted {m['predicted']} ({m['probability']:.2f})"
            for m in metrics["worst_mistakes"]
        ]
        mistakes = plot_image_grid(
            views,
            titles,
            out / "mistakes.jpg",
            title="Most confident mistakes",
            title_colours=["#B22222"] * len(views),
        )
    pairs = confused_pairs(confusion)
    metrics["confused_pairs"] = [
        {"true": labels[i], "predicted": labels[j], "count": n} for i, j, n in pairs
    ]
    examples, titles = [], []
    for i, j, _ in pairs:
        members = [k for k in range(len(rows)) if y_true[k] == i and predicted[k] == j][:4]
        examples += members
        titles += [f"{labels[i]} -> {labels[j]}"] * len(members)
    examples_grid = None
    if examples:
        examples_grid = plot_image_grid(
            _eval_views(clf, [rows[k] for k in examples]),
            titles,
            out / "confused_pairs.jpg",
            title="Most confused class pairs (true -> predicted)",
        )
    return EvalFigures(
        counts, normalised, roc, pr, calibration, mistakes, examples_grid, uncalibrated or None
    )


def _run_records(clf: Classifier, out: Path) -> RunRecords:
    """What the report shows beside the metrics: data summary, training summary, memory,
    and the export table when the run has been exported.

    The memory estimate is the one the training run recorded (same configuration); it is
    computed here only for runs that predate it.
    """
    summary = read_summary(clf.run_dir)
    memory = summary.memory if summary else RunMemory()
    if memory.estimate is None and memory.error is None:
        from pipeline.memory import run_memory_estimate

        # The report is still useful without it; the error says why.
        memory = replace(run_memory_estimate(clf.cfg, len(clf.labels)), measured=memory.measured)
    return RunRecords(
        data=read_data_summary(clf.run_dir / RUN_DATA_DIR),
        training=summary,
        curves=clf.run_dir / CURVES_FILE,
        memory=memory,
        export=read_export_record(clf.run_dir / EXPORT_DIR),
        review=_review_link(clf, out),
    )


def _review_link(clf: Classifier, out: Path) -> str | None:
    """The relative link from the report folder to its data set's review page, if made."""
    page = review_page(out.parent, clf.cfg.data.dataset)
    return os.path.relpath(page, out) if page.is_file() else None


def _write_report(out: Path, report: EvalReport) -> Path:
    return atomic_write_text(out / REPORT_FILE, render_report(report))


def baseline_comparison(
    summary: TrainSummary | None, split: str, metrics: Metrics
) -> BaselineComparison | None:
    """The run's frozen-feature baseline on this split beside the model's figures, or None
    for a run without one (from scratch, or trained before baselines were recorded).

    The baseline was scored by the train stage on the same recorded split (``scored_rows``
    checks the split is the run's own), so the difference is paired photo for photo.
    """
    baseline = summary.baseline if summary else None
    scores = getattr(baseline, split, None) if baseline else None
    if scores is None:
        return None
    return BaselineComparison(
        method=baseline.method,
        C=baseline.C,
        kept_phase=None if summary.kept_phase is None else str(summary.kept_phase),
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        images=scores.images,
        accuracy_points_over_baseline=100 * (metrics["accuracy"] - scores.accuracy),
        macro_f1_points_over_baseline=100 * (metrics["macro_f1"] - scores.macro_f1),
    )


def _print_summary(metrics: Metrics, out: Path) -> None:
    k = metrics["top_k"]
    print(
        f"accuracy {metrics['accuracy']:.4f}  top-{k} {metrics[f'top_{k}_accuracy']:.4f}  "
        f"loss {metrics['loss']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"ECE {metrics['expected_calibration_error']:.4f}"
    )
    calibration = metrics.get("calibration")
    if calibration:
        print(
            f"Calibration: temperature {calibration['temperature']:.3f}; ECE on this split "
            f"{calibration['ece_before']:.4f} before it, {calibration['ece_after']:.4f} after"
        )
    else:
        print("Calibration: not calibrated (the run has no temperature in summary.json)")
    unknown = metrics.get("unknown")
    if unknown:
        line = (
            f"Unknown photos: {100 * unknown['split_flagged']:.1f}% of the {metrics['split']} "
            f"photos flagged (threshold {unknown['threshold']:.4f})"
        )
        if unknown["other_flagged"] is not None:
            line += (
                f", {100 * unknown['other_flagged']:.1f}% of {unknown['other_images']} photos "
                f"under {unknown['other_photos']}; AUROC {unknown['auroc']:.4f}"
            )
        print(line)
    baseline = metrics.get("baseline")
    if baseline:
        print(
            f"Frozen-feature baseline (logistic regression on the pretrained base's features): "
            f"accuracy {baseline['accuracy']:.4f}, macro-F1 {baseline['macro_f1']:.4f}; "
            f"fine-tuning adds {baseline['accuracy_points_over_baseline']:+.1f} points"
            + (
                " (the model with flip averaging, the baseline without)"
                if metrics["tta"] == "flip"
                else ""
            )
        )
    print(per_class_markdown(metrics), end="")
    print(f"Report: {out / REPORT_FILE} (open it in a browser; everything is embedded)")
