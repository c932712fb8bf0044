"""The review stage (`make review`): what a person should look at before training.

Public entry: ``review(cfg)``. On the data set's current manifests (made first when missing
or stale, as `make train` does) and the configured pretrained backbone's pooled features
(the feature cache training uses, data/<dataset id>/features/), it ranks suspected label
errors among the training and validation photos, outliers among all photos, and shows the
data stage's near-duplicate groups. Outputs go to reports/<dataset id>/review/: two CSV
files, review.json and one self-contained HTML page. Nothing of the user's is touched: a
photo is taken out by listing it in data/<dataset id>/exclude.txt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.data.exclude import EXCLUDE_FILE
from pipeline.data.manifest import CLASSES_FILE, ManifestRow, load_split, read_classes
from pipeline.data.near_duplicates import NEAR_DUPLICATES_REPORT
from pipeline.data.provenance import dataset_id
from pipeline.files import (
    atomic_write_text,
    exclusive,
    generated_dir,
    read_csv,
    write_csv,
    write_json,
)
from pipeline.review.report import NearGroup, Outlier, ReviewPage, Suspect, render_review
from pipeline.review.suspects import (
    FILTER_BY,
    FOLDS,
    PROBE_GRID,
    LabelSuspects,
    label_suspects,
    out_of_fold_probabilities,
    outlier_scores,
)

REVIEW_DIR = "review"
LABEL_ISSUES_CSV = "label_issues.csv"
OUTLIERS_CSV = "outliers.csv"
REVIEW_JSON = "review.json"
REPORT_FILE = "index.html"


@dataclass
class ReviewResult:
    out_dir: Path
    label_issues: int  # photos cleanlab flags
    outliers: list[str]  # paths, most atypical first
    suspects: list[str]  # train and val paths, most suspect first
    near_groups: int
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def review_dir(cfg: Config) -> Path:
    """reports/<dataset id>/review/: one review per data set, whichever run trains on it."""
    return review_page(cfg.paths.reports, cfg.data.dataset).parent


def review_page(reports: str | Path, dataset: str) -> Path:
    """The review's page for a data set, under the reports folder ``reports``."""
    return Path(reports) / dataset_id(dataset) / REVIEW_DIR / REPORT_FILE


def review(cfg: Config) -> ReviewResult:
    """Rank the data set's photos for a person to look at; write the CSVs and the page."""
    from pipeline.data.stage import ensure_manifests

    if cfg.model.weights.lower() == "none":
        raise ConfigError(
            "make review ranks photos by a pretrained backbone's features, and "
            "model.weights=none gives random ones; use WEIGHTS=imagenet or a weights file"
        )
    start = time.perf_counter()
    spec, weights = _pretrained_backbone(cfg)  # before the data stage's work, as train does
    folder = ensure_manifests(cfg)
    classes = read_classes(folder / CLASSES_FILE)
    rows = {split: load_split(folder, split) for split in ("train", "val", "test")}
    features = split_features(cfg, classes, rows, spec, weights)
    judged = _photos(rows, features, ("train", "val"))
    everyone = _photos(rows, features, ("train", "val", "test"))
    labels = np.array([r.label_index for r in judged.rows])
    print(
        f"Judging the labels of {len(judged.rows)} training and validation photos: "
        f"{FOLDS}-fold out-of-fold logistic regression (C of lowest out-of-fold log loss "
        f"among {', '.join(f'{c:g}' for c in PROBE_GRID)}), then cleanlab"
    )
    probs, probe_c = out_of_fold_probabilities(judged.features, labels, len(classes))
    suspects = label_suspects(labels, probs)
    atypical = outlier_scores(everyone.features)
    groups = _near_groups(folder)
    out = generated_dir(review_dir(cfg).parent)
    with exclusive(out, f"make review DATASET={cfg.data.dataset}", wait=True):
        out = generated_dir(out / REVIEW_DIR)
        found = Findings(judged, suspects, probe_c, everyone, atypical, groups)
        files = _write(out, cfg, classes, found, folder)
    seconds = time.perf_counter() - start
    ranking = suspects.ranking()
    result = ReviewResult(
        out_dir=out,
        label_issues=int(suspects.flagged.sum()),
        outliers=[everyone.rows[i].path for i in np.argsort(-atypical, kind="stable")],
        suspects=[judged.rows[i].path for i in ranking],
        near_groups=len(groups),
        seconds=seconds,
        files=files,
    )
    _print_summary(result, folder)
    return result


def _pretrained_backbone(cfg: Config) -> tuple[Any, str | None]:
    """The configured backbone's spec and its resolved weights file; a backbone without
    pretrained weights is refused (random features rank nothing)."""
    from pipeline.model import classifier_spec, resolve_weights

    spec = classifier_spec(cfg)
    if not spec.backbone.pretrained:
        raise ConfigError(
            f"make review needs a pretrained backbone's features; {spec.backbone.name} has "
            "none: use BACKBONE= one of the pretrained backbones (make config lists them)"
        )
    return spec, resolve_weights(spec.backbone, spec.weights, spec.alpha, spec.size)


def split_features(
    cfg: Config,
    classes: list[str],
    rows: dict[str, list[ManifestRow]],
    spec: Any,
    weights: str | None,
) -> dict[str, np.ndarray]:
    """Pooled features per split, through training's feature cache (shared both ways)."""
    from pipeline.model import build_classifier
    from pipeline.training.features import load_or_extract, weights_fingerprint

    model = build_classifier(spec, len(classes), weights)
    fingerprint = weights_fingerprint(model)
    batch = cfg.input.batch_size
    out = {}
    for split, split_rows in rows.items():
        cached = load_or_extract(model, split_rows, cfg, spec.backbone, batch, fingerprint, split)
        how = "reused" if cached.reused else f"extracted in {cached.seconds:.1f}s"
        print(f"Features of {len(split_rows)} {split} photos {how}: {cached.path}")
        out[split] = cached.features
    return out


@dataclass(frozen=True)
class Photos:
    """Photos of some splits, in manifest order, with their split names and features."""

    rows: list[ManifestRow]
    splits: list[str]
    features: np.ndarray


def _photos(
    rows: dict[str, list[ManifestRow]], features: dict[str, np.ndarray], splits: tuple[str, ...]
) -> Photos:
    return Photos(
        rows=[r for s in splits for r in rows[s]],
        splits=[s for s in splits for _ in rows[s]],
        features=np.concatenate([features[s] for s in splits]),
    )


def _near_groups(folder: Path) -> list[NearGroup]:
    """The data stage's near-duplicate groups (data/<id>/near_duplicates.csv)."""
    path = folder / NEAR_DUPLICATES_REPORT
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for row in read_csv(path) if path.is_file() else []:
        groups.setdefault(row["group"], []).append((row["path"], row["label"], row["split"]))
    return [NearGroup(members) for members in groups.values()]


@dataclass(frozen=True)
class Findings:
    """What the review found, before it is written."""

    judged: Photos  # training and validation photos, whose labels were judged
    suspects: LabelSuspects  # per judged photo
    probe_c: float  # the probe's C that gave the suspects' probabilities
    everyone: Photos  # every photo, whose outlier scores were computed
    atypical: np.ndarray  # outlier score per photo of ``everyone``
    groups: list[NearGroup]


def _write(
    out: Path, cfg: Config, classes: list[str], found: Findings, folder: Path
) -> dict[str, Path]:
    """The two ranked CSVs, review.json and the page, each written atomically."""
    judged, suspects, everyone = found.judged, found.suspects, found.everyone
    atypical, groups = found.atypical, found.groups
    ranking, probs = suspects.ranking(), suspects.probabilities
    given = np.array([r.label_index for r in judged.rows])
    suggested = suspects.suggested
    files = {
        "label_issues": write_csv(
            out / LABEL_ISSUES_CSV,
            ["rank", "path", "split", "given", "suggested", "p_given", "p_suggested", "flagged"],
            (
                [
                    rank,
                    judged.rows[i].path,
                    judged.splits[i],
                    classes[given[i]],
                    classes[suggested[i]],
                    f"{probs[i, given[i]]:.4f}",
                    f"{probs[i, suggested[i]]:.4f}",
                    str(bool(suspects.flagged[i])).lower(),
                ]
                for rank, i in enumerate(ranking, start=1)
            ),
        )
    }
    order = np.argsort(-atypical, kind="stable")
    files["outliers"] = write_csv(
        out / OUTLIERS_CSV,
        ["rank", "path", "split", "label", "outlier_score"],
        (
            [
                rank,
                everyone.rows[i].path,
                everyone.splits[i],
                everyone.rows[i].label,
                f"{atypical[i]:.4f}",
            ]
            for rank, i in enumerate(order, start=1)
        ),
    )
    summary = {
        "dataset": cfg.data.dataset,
        "backbone": cfg.model.backbone,
        "image_size": cfg.image_size,
        "judged_photos": len(judged.rows),
        "all_photos": len(everyone.rows),
        "folds": FOLDS,
        "probe_C": found.probe_c,
        "probe_C_grid": list(PROBE_GRID),
        "filter_by": FILTER_BY,
        "label_issues": int(suspects.flagged.sum()),
        "near_duplicate_groups": len(groups),
        "exclude_file": str(folder / EXCLUDE_FILE),
    }
    files["summary"] = write_json(out / REVIEW_JSON, summary)
    page = ReviewPage(
        title=f"Review of {cfg.data.dataset}",
        summary=summary,
        suspects=[
            Suspect(
                judged.rows[i].path,
                judged.splits[i],
                classes[given[i]],
                classes[suggested[i]],
                float(probs[i, given[i]]),
                float(probs[i, suggested[i]]),
                bool(suspects.flagged[i]),
            )
            for i in ranking
        ],
        outliers=[
            Outlier(
                everyone.rows[i].path,
                everyone.splits[i],
                everyone.rows[i].label,
                float(atypical[i]),
            )
            for i in order
        ],
        near_groups=groups,
        exclude_file=folder / EXCLUDE_FILE,
    )
    files["report"] = atomic_write_text(out / REPORT_FILE, render_review(page))
    return files


def _print_summary(result: ReviewResult, folder: Path) -> None:
    print(
        f"Review: {result.label_issues} suspected label error(s) flagged among the training "
        f"and validation photos, {result.near_groups} near-duplicate group(s); outliers "
        f"ranked ({result.seconds:.0f}s)"
    )
    for path in result.suspects[: min(3, result.label_issues)]:
        print(f"  suspect: {path}")
    print(
        f"Look at {result.out_dir / REPORT_FILE}; to take a photo out, list it in "
        f"{folder / EXCLUDE_FILE} (nothing of yours is moved or changed)"
    )
