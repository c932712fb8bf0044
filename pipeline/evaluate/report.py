"""One self-contained HTML page per evaluated run: every figure embedded, no network needed.

Numbers carry ``data-metric`` attributes holding the exact JSON value, so a test (or a
script) can check that what the page shows is what metrics.json says.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data.provenance import DataSummary
from pipeline.evaluate.metrics import Metrics
from pipeline.export.record import ExportRecord, ModelFigures
from pipeline.export.scores import COLUMNS, figure, table_note
from pipeline.memory.record import RunMemory
from pipeline.summary import TrainSummary


@dataclass(frozen=True)
class EvalFigures:
    """The figures evaluate draws for the report; None where the split gives nothing to
    draw (no mistakes, no confused pair)."""

    confusion_counts: Path
    confusion_normalised: Path
    roc: Path
    pr: Path
    reliability: Path
    mistakes: Path | None = None
    confused_pairs: Path | None = None
    reliability_uncalibrated: Path | None = None  # a calibrated run's, before its T

    def files(self) -> dict[str, Path]:
        """The drawn figures by name, as EvalResult.files lists them."""
        drawn = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: path for name, path in drawn.items() if path is not None}


@dataclass(frozen=True)
class RunRecords:
    """What the run folder holds beside the model, shown next to the metrics."""

    data: DataSummary | None  # the recorded split's data summary (make data's)
    training: TrainSummary | None  # summary.json; None for an unfinished run
    curves: Path  # learning_curves.png
    memory: RunMemory
    export: ExportRecord | None  # export.json; None until the run is exported
    review: str | None = None  # relative link to the data set's `make review` page, if any


@dataclass(frozen=True)
class EvalReport:
    """Everything one report page shows."""

    metrics: Metrics
    figures: EvalFigures
    records: RunRecords
    cfg: Config
    run_dir: Path


# The page's style sheet, inlined so that the report stays one self-contained file.
STYLE = (Path(__file__).parent / "report.css").read_text(encoding="utf-8")


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    path = Path(path)
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def _num(value: Any, key: str, digits: int = 4) -> str:
    if value is None:
        return '<span class="muted">n/a</span>'
    return (
        f'<span data-metric="{html.escape(key)}" data-value="{value!r}">{value:.{digits}f}</span>'
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(metrics: Metrics) -> str:
    k = metrics["top_k"]
    items = [
        ("accuracy", "accuracy"),
        (f"top-{k} accuracy", f"top_{k}_accuracy"),
        ("loss", "loss"),
        ("macro F1", "macro_f1"),
        ("calibration error", "expected_calibration_error"),
    ]
    cards = "".join(
        f'<div class="card"><div class="muted">{label}</div>'
        f'<div class="value">{_num(metrics[key], key)}</div></div>'
        for label, key in items
    )
    return (
        f'<div class="cards">{cards}<div class="card"><div class="muted">images</div>'
        f'<div class="value">{_num(metrics["images"], "images", 0)}</div></div></div>'
    )


def _per_class(metrics: Metrics) -> str:
    rows = [
        [
            html.escape(c["class"]),
            _num(c["precision"], f"per_class.{i}.precision"),
            _num(c["recall"], f"per_class.{i}.recall"),
            _num(c["f1"], f"per_class.{i}.f1"),
            _num(c["support"], f"per_class.{i}.support", 0),
            _num(c["roc_auc"], f"per_class.{i}.roc_auc"),
            _num(c["average_precision"], f"per_class.{i}.average_precision"),
        ]
        for i, c in enumerate(metrics["per_class"])
    ]
    return _table(["class", "precision", "recall", "F1", "support", "ROC AUC", "AP"], rows)


def _data_section(data: DataSummary | None) -> str:
    if data is None:
        return '<p class="muted">(data summary not found)</p>'
    splits = ("train", "val", "test")
    rows = [
        [
            html.escape(c),
            *(str(data.counts[c][s]) for s in splits),
            str(sum(data.counts[c].values())),
        ]
        for c in data.classes
    ]
    rows.append(
        [
            "<b>total</b>",
            *(f"<b>{data.totals[s]}</b>" for s in splits),
            f"<b>{sum(data.totals.values())}</b>",
        ]
    )
    note = (
        f"<p>Source: {html.escape(data.origin)}. {data.files_found} files found, "
        f"{len(data.skipped)} skipped (see check_report.csv), {data.duplicate_groups} "
        "duplicate group(s).</p>"
    )
    return note + _table(["class", *splits, "all"], rows)


def _review_note(link: str | None, cfg: Config) -> str:
    if link is None:
        return (
            '<p class="muted">No review of this data set\'s photos yet: <code>make review '
            f"DATASET={html.escape(cfg.data.dataset)}</code> ranks suspected label errors, "
            "outliers and near-duplicates.</p>"
        )
    return (
        f"<p>The photos' review (suspected label errors, outliers, near-duplicates): "
        f'<a href="{html.escape(link)}">{html.escape(link)}</a></p>'
    )


def _training_section(summary: TrainSummary | None) -> str:
    """The summary's plain values (run, backbone, device, seconds, ...), one row each."""
    if summary is None:
        return '<p class="muted">(training summary not found)</p>'
    flat = []
    for f in fields(summary):
        value = getattr(summary, f.name)
        if isinstance(value, (str, int, float, bool)) or value is None:
            flat.append([html.escape(f.name), html.escape(str(value))])
    return _table(["", "value"], flat) if flat else ""


def _baseline_section(metrics: Metrics) -> str:
    """What fine-tuning added over the frozen-feature logistic regression, on this split."""
    b = metrics.get("baseline")
    if not b:
        return (
            '<p class="muted">No frozen-feature baseline for this run (a network trained '
            "from scratch, or a run from before baselines were recorded).</p>"
        )
    points = b["accuracy_points_over_baseline"]
    flip = (
        " The model's figures average each photo with its mirror image (input.tta=flip); "
        "the baseline's do not."
        if metrics.get("tta") == "flip"
        else ""
    )
    kept = (
        "the fine-tuned model (phase 2)"
        if b["kept_phase"] == "2"
        else ("the phase-1 model: fine-tuning did not lower the validation loss beyond noise")
    )
    rows = [
        ["this model", f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}"],
        [
            f"frozen features, logistic regression (C = {b['C']:g})",
            _num(b["accuracy"], "baseline.accuracy"),
            _num(b["macro_f1"], "baseline.macro_f1"),
        ],
    ]
    return (
        f'<p class="headline">Fine-tuning adds <b>{points:+.1f} points</b> of accuracy over '
        f"frozen features on the {html.escape(metrics['split'])} split ({b['images']} images, "
        f"the same photos). The run kept {kept}.{flip}</p>"
        + _table(["", "accuracy", "macro F1"], rows)
    )


def _memory_section(memory: RunMemory | None) -> str:
    """The estimate per training phase, next to what the training run really used."""
    if memory is None or (memory.estimate is None and memory.error is None):
        return '<p class="muted">(no memory estimate)</p>'
    if memory.estimate is None:
        return f'<p class="muted">{html.escape(memory.error)}</p>'
    estimate, measured = memory.estimate, memory.measured

    def mib(value: float) -> str:
        return f"{value / 2**20:,.1f} MiB"

    rows = [
        [
            html.escape(name),
            f"{f.trainable:,}",
            mib(f.textbook_bytes),
            mib(f.realistic_bytes),
            str(f.max_batch),
            "yes" if f.fits else "no",
        ]
        for name, f in estimate.training.items()
    ]
    parts = [
        f"<p>{estimate.params:,} parameters; inference on one image needs "
        f"{mib(estimate.inference_bytes)}; batch {estimate.batch_size}, "
        f"{html.escape(str(estimate.precision))}.</p>",
        _table(
            [
                "phase",
                "trainable",
                "textbook minimum",
                "realistic estimate",
                "largest batch in budget",
                "fits",
            ],
            rows,
        ),
    ]
    if measured:
        items = ", ".join(f"{k.replace('_', ' ')}: {mib(v)}" for k, v in measured.items())
        parts.append(
            f"<p>Measured during training: {html.escape(items)} (the process peak "
            "includes the TensorFlow runtime and the input pipeline).</p>"
        )
    details = html.escape(json.dumps(estimate.to_json(), indent=2, default=str))
    parts.append(f"<details><summary>full estimate</summary><pre>{details}</pre></details>")
    return "\n".join(parts)


EXPORT_START, EXPORT_END = "<!-- export:start -->", "<!-- export:end -->"


def export_section(figures: ExportRecord | None) -> str:
    """export.json's table (make export), between markers so that a later export can
    replace it in an existing report; a hint when the run has not been exported."""
    if not figures:
        body = (
            '<p class="muted">Not exported yet: <code>make export RUN=&lt;run&gt;</code> adds '
            "the TFLite files' size, accuracy, agreement and speed here.</p>"
        )
    else:
        rows = [
            [
                html.escape(row["file"]),
                *(
                    _export_cell(row, key, fmt, f"export.{name}.{key}")
                    for _, _, key, fmt in COLUMNS
                ),
            ]
            for name, row in (("keras", figures["keras"]), *figures["variants"].items())
        ]
        warnings = "".join(
            f'<p class="warning">{html.escape(line)}</p>' for line in figures.get("warnings", [])
        )
        body = (
            f"<p>Files in models/{html.escape(figures['run'])}/export/, each taking raw RGB "
            "pixels with the backbone's preprocessing inside.</p>"
            + _table(["file", *(h for h, _, _, _ in COLUMNS)], rows)
            + f'<p class="muted">{html.escape(table_note(figures))}</p>'
            + _export_metadata(figures)
            + warnings
        )
    return f"{EXPORT_START}\n<h2>Export</h2>\n{body}\n{EXPORT_END}"


def _export_metadata(figures: ExportRecord) -> str:
    """Per file, what its TFLite metadata says it takes and the runtimes it was checked in."""
    items = [
        f"<li><code>{html.escape(row['file'])}</code>: {meta['labels']} labels, "
        f"{html.escape(meta['input'])}; checked with {html.escape(', '.join(meta['runtimes']))}"
        "</li>"
        for row in figures["variants"].values()
        if (meta := row.get("metadata"))
    ]
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _export_cell(row: ModelFigures, key: str, formatter: Any, metric: str) -> str:
    value = figure(row, key)
    if value is None:
        return '<span class="muted">n/a</span>'
    return (
        f'<span data-metric="{html.escape(metric)}" data-value="{value!r}">'
        f"{html.escape(formatter(value))}</span>"
    )


def with_export_section(page: str, figures: ExportRecord) -> str:
    """``page`` (a rendered report) with its export section replaced by ``figures``'; a
    report from before export sections gets one above its configuration."""
    section = export_section(figures)
    if EXPORT_START in page and EXPORT_END in page:
        head, rest = page.split(EXPORT_START, 1)
        return head + section + rest.split(EXPORT_END, 1)[1]
    anchor = "<h2>Configuration</h2>" if "<h2>Configuration</h2>" in page else "</body>"
    return page.replace(anchor, section + "\n" + anchor, 1)


def _calibration_section(metrics: Metrics, training: TrainSummary | None) -> str:
    """The run's temperature and what it does to this split's calibration error."""
    c = metrics.get("calibration")
    if not c:
        recorded = training.calibration if training else None
        why = (
            recorded.skipped
            if recorded and recorded.skipped
            else "a run trained before temperature scaling"
        )
        return f'<p class="muted">Not calibrated ({html.escape(why)}).</p>'
    return (
        f"<p>Temperature scaling: T = {_num(c['temperature'], 'calibration.temperature')}, "
        "fitted on the validation photos when the run was trained and folded into the "
        "model, so every probability here (and in predict and the exports) is calibrated. "
        "Expected calibration error on this split: "
        f"{_num(c['ece_before'], 'calibration.ece_before')} before it, "
        f"{_num(c['ece_after'], 'calibration.ece_after')} after.</p>"
    )


def _unknown_section(metrics: Metrics) -> str:
    """How unknown_score separates this split from photos of another kind."""
    u = metrics.get("unknown")
    if not u:
        return (
            '<p class="muted">No unknown-photo detector (a run trained before it: no ood.npz).</p>'
        )
    rows = [
        [
            f"this run's {html.escape(metrics['split'])} photos",
            str(u["split_images"]),
            _num(u["split_flagged"], "unknown.split_flagged"),
        ]
    ]
    if u["other_photos"]:
        rows.append(
            [
                html.escape(u["other_photos"]),
                str(u["other_images"]),
                _num(u["other_flagged"], "unknown.other_flagged"),
            ]
        )
    auroc = (
        f" AUROC of the score, the other photos against this split's: "
        f"{_num(u['auroc'], 'unknown.auroc')}."
        if u["other_photos"]
        else " Give eval.unknown_photos=&lt;folder&gt; to measure it on photos of another kind."
    )
    return (
        f"<p>unknown_score: cosine distance to the {u['k']}th nearest training photo; "
        f"flagged above {_num(u['threshold'], 'unknown.threshold')} "
        f"({100 * u['rate']:g}% of validation photos).{auroc}</p>"
        + _table(["photos", "images", "share flagged unknown"], rows)
    )


def _mistakes_table(metrics: Metrics) -> str:
    rows = [
        [
            html.escape(Path(m["path"]).name),
            html.escape(m["true"]),
            html.escape(m["predicted"]),
            f"{m['probability']:.3f}",
        ]
        for m in metrics.get("worst_mistakes", [])[:12]
    ]
    return (
        _table(["file", "true", "predicted", "probability"], rows)
        if rows
        else "<p>No mistakes on this split.</p>"
    )


def render_report(report: EvalReport) -> str:
    metrics, figures, records = report.metrics, report.figures, report.records
    cfg, run_dir = report.cfg, report.run_dir
    title = f"{run_dir.name}: {metrics['split']} split"
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    pairs = (
        "".join(
            f"<li>{html.escape(p['true'])} &rarr; {html.escape(p['predicted'])}: {p['count']}</li>"
            for p in metrics.get("confused_pairs", [])
        )
        or "<li>none</li>"
    )
    config = html.escape(json.dumps(cfg.to_dict(), indent=2))
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{cfg.model.backbone}, {cfg.image_size}px, data set '
        f"{html.escape(cfg.data.dataset)}; report made {when}</p>",
        "<h2>Summary</h2>",
        _cards(metrics),
        _baseline_section(metrics),
        "<h2>Data</h2>",
        _data_section(records.data),
        _review_note(records.review, cfg),
        "<h2>Training</h2>",
        _img(records.curves, "learning curves"),
        _training_section(records.training),
        "<h2>Per class</h2>",
        _per_class(metrics),
        "<h2>Confusion</h2>",
        '<div class="grid">',
        _img(figures.confusion_counts, "confusion matrix, counts"),
        _img(figures.confusion_normalised, "confusion matrix, normalised"),
        "</div>",
        f"<p>Most confused pairs (true &rarr; predicted):</p><ul>{pairs}</ul>",
        _img(figures.confused_pairs, "examples of confused pairs"),
        "<h2>Curves and calibration</h2>",
        '<div class="grid">',
        _img(figures.roc, "ROC curves"),
        _img(figures.pr, "precision-recall curves"),
        _img(figures.reliability, "reliability diagram"),
        *(
            [_img(figures.reliability_uncalibrated, "reliability before temperature scaling")]
            if figures.reliability_uncalibrated
            else []
        ),
        "</div>",
        _calibration_section(metrics, records.training),
        "<h2>Unknown photos</h2>",
        _unknown_section(metrics),
        "<h2>Worst mistakes</h2>",
        _img(figures.mistakes, "most confident mistakes"),
        _mistakes_table(metrics),
        "<h2>Memory estimate</h2>",
        _memory_section(records.memory),
        export_section(records.export),
        f"<h2>Configuration</h2><details><summary>config.json</summary><pre>{config}</pre>"
        "</details>",
    ]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
