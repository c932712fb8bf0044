"""Figures as PNG files a person opens: one function per figure, each written atomically."""

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


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


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
    """A grid of RGB images (uint8 or float in [0, 255]) with one caption each."""
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
    return save_figure(fig, path)
