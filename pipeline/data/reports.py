"""The data stage's figures, redrawn only when what they show changed.

``class_distribution.png`` and ``augmented_samples.jpg`` are functions of the manifests
and the configuration. Drawing the sample grid needs TensorFlow (a few seconds to import,
more to trace the input pipeline), which would cost more than everything else in a
`make data` rerun whose checks are all remembered. So a hidden stamp beside them,
``.drawn-from.json``, records the digest of what they were drawn from (manifests, counts,
the options the sample grid depends on, ``REPORTS_VERSION``); when it matches and both
files are there, they are kept as they are and TensorFlow is never imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from pipeline.config import Config
from pipeline.data.manifest import ManifestRow
from pipeline.data.provenance import manifest_digests
from pipeline.files import read_json, write_json

REPORTS_VERSION = 1  # bump when a figure's drawing changes
STAMP = ".drawn-from.json"
CLASS_DISTRIBUTION = "class_distribution.png"
AUGMENTED_SAMPLES = "augmented_samples.jpg"


def draw_data_reports(
    cfg: Config,
    dataset_dir: Path,
    reports_dir: Path,
    counts: dict[str, dict[str, int]],
    train_rows: list[ManifestRow],
    classes: list[str],
) -> list[Path]:
    """The two figures under reports_dir, drawn afresh unless the stamp says they are current."""
    paths = [reports_dir / CLASS_DISTRIBUTION, reports_dir / AUGMENTED_SAMPLES]
    digest = _digest(cfg, dataset_dir, counts)
    try:
        stamp = read_json(reports_dir / STAMP)
    except (OSError, ValueError):  # unreadable or damaged: redraw
        stamp = None
    current = isinstance(stamp, dict) and stamp.get("digest") == digest
    if current and all(p.is_file() for p in paths):
        print(f"Figures in {reports_dir}/ kept: nothing they show changed")
        return paths
    (reports_dir / STAMP).unlink(missing_ok=True)  # no stamp while the figures are redrawn
    from pipeline.plots import plot_class_distribution

    plot_class_distribution(counts, paths[0])
    _draw_augmented_samples(cfg, train_rows, classes, paths[1])
    write_json(reports_dir / STAMP, {"digest": digest})
    return paths


def _digest(cfg: Config, dataset_dir: Path, counts: dict[str, dict[str, int]]) -> str:
    """What the figures show: the manifests, the counts, and the options the sample grid's
    input pipeline reads (input.*, the backbone's input size, train.seed)."""
    options = [dataclasses.asdict(cfg.input), cfg.model.backbone, cfg.image_size, cfg.train.seed]
    what = [REPORTS_VERSION, manifest_digests(dataset_dir), counts, options]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _draw_augmented_samples(cfg, train_rows, classes, path: Path) -> Path:
    """What the model is fed: a grid of augmented training images with their labels."""
    from pipeline.quiet import import_tensorflow_unless_verbose

    import_tensorflow_unless_verbose()
    from pipeline.inputs import sample_augmented
    from pipeline.plots import plot_image_grid

    images, labels = sample_augmented(train_rows, cfg.input, cfg.image_size, cfg.train.seed)
    titles = [classes[i] for i in labels]
    return plot_image_grid(images, titles, path, title="Augmented training samples")
