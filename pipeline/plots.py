"""Figures a person opens: one function per figure, each written atomically.

Charts are PNG (sharp lines, small); grids of photos are JPEG (a tenth of the PNG's size,
which keeps the self-contained HTML report small): the file name's suffix decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.files import atomic_path

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


JPEG_QUALITY = 85
GRID_DPI = 90  # a grid cell is 2.6 in: ~230 px, about the size of the images shown


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """PNG, or JPEG (quality JPEG_QUALITY) when path ends in .jpg or .jpeg."""
    plt = _pyplot()
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options = {
            "format": "jpeg",
            "pil_kwargs": {"quality": JPEG_QUALITY, "optimize": True, "progressive": True},
        }
    else:
        options = {"format": "png"}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", **options)
    plt.close(fig)
    return path


def plot_class_distribution(counts: dict[str, dict[str, int]], path: str | Path) -> Path:
    """Images per class and split, side by side, with the counts written on the bars."""
    plt = _pyplot()
    classes = list(counts)
    splits = list(SPLIT_COLOURS)
    x = np.arange(len(classes))
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) + 2), 4.5))
    for i, split in enumerate(splits):
        values = [counts[c][split] for c in classes]
        bars = ax.bar(x + (i - 1) * width, values, width, label=split, color=SPLIT_COLOURS[split])
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    return save_figure(fig, path)


def plot_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    title: str = "",
    columns: int = 4,
    title_colours: Sequence[str] | None = None,
) -> Path:
    """A grid of RGB images (uint8 or float in [0, 255]) with one caption each; give path a
    .jpg suffix (photos compress ten times better as JPEG than as PNG)."""
    plt = _pyplot()
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8))
            colour = title_colours[i] if title_colours else "black"
            ax.set_title(titles[i], fontsize=8, color=colour)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=GRID_DPI)


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: str | Path, normalised: bool
) -> Path:
    """A heatmap that stays readable with many classes: size and labels follow the count."""
    import seaborn as sns

    plt = _pyplot()
    n = len(classes)
    side = min(30.0, max(5.0, 0.45 * n + 3))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    sns.heatmap(
        matrix,
        annot=n <= 25,
        fmt=".2f" if normalised else "d",
        cmap="Blues",
        square=True,
        xticklabels=classes,
        yticklabels=classes,
        vmin=0,
        vmax=1 if normalised else None,
        cbar_kws={"shrink": 0.7},
        ax=ax,
        annot_kws={"fontsize": 8 if n > 10 else 10},
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix" + (" (each row sums to 1)" if normalised else " (counts)"))
    plt.setp(ax.get_xticklabels(), rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    plt.setp(ax.get_yticklabels(), rotation=0)
    return save_figure(fig, path)


def plot_one_vs_rest(
    curves: Sequence[dict], classes: Sequence[str], path: str | Path, kind: str
) -> Path:
    """ROC (kind='roc') or precision-recall (kind='pr') curves, one line per class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name, c in zip(classes, curves):
        if kind == "roc" and c.get("roc_auc") is not None:
            ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['roc_auc']:.3f})")
        elif kind == "pr" and c.get("average_precision") is not None:
            ax.plot(c["recall"], c["precision"], label=f"{name} (AP {c['average_precision']:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(
            xlabel="false positive rate",
            ylabel="true positive rate",
            title="ROC, one class against the rest",
        )
    else:
        ax.set(
            xlabel="recall",
            ylabel="precision",
            title="Precision-recall, one class against the rest",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(
        fontsize=7,
        loc="lower right" if kind == "roc" else "lower left",
        ncol=2 if len(classes) > 12 else 1,
    )
    return save_figure(fig, path)


def plot_reliability(
    bins: Sequence[dict], ece: float, path: str | Path, title: str = "Reliability"
) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    accuracy = [b["accuracy"] or 0.0 for b in bins]
    ax.bar(centres, accuracy, width=width * 0.95, color="#4C72B0", label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.set(ylabel="accuracy", ylim=(0, 1), title=f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    hist.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="#999999")
    hist.set(xlabel="confidence (top probability)", ylabel="images", xlim=(0, 1))
    return save_figure(fig, path)
