"""The layout of a trained run, models/<run>/: file names, and finding runs by name or age.

Written by the train stage, read by evaluate, predict and experiments; light to import
(no TensorFlow), so a stage can fail on bad input before TensorFlow starts.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "learning_curves.png"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"  # finished phases, so that a restarted run skips them


def find_runs(models_dir: str | Path) -> list[Path]:
    """Finished runs (a model and a summary), oldest first."""
    root = Path(models_dir)
    runs = [
        p for p in root.glob("*/") if (p / MODEL_FILE).is_file() and (p / SUMMARY_FILE).is_file()
    ]
    return sorted(runs, key=lambda p: (p / SUMMARY_FILE).stat().st_mtime)


def resolve_run(models_dir: str | Path, run: str = "") -> Path:
    """models/<run>, a path to a run folder, or the newest finished run when run is ''."""
    if run:
        for candidate in (Path(run), Path(models_dir) / run):
            if (candidate / MODEL_FILE).is_file():
                return candidate
        raise FileNotFoundError(
            f"Run {run!r}: no {MODEL_FILE} in {Path(models_dir) / run} or {run}; "
            f"give RUN=<folder under {models_dir}/> of a finished `make train`"
        )
    runs = find_runs(models_dir)
    if not runs:
        raise FileNotFoundError(
            f"No finished run under {models_dir}/: run `make train` first (or give RUN=...)"
        )
    return runs[-1]
