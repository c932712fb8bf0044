"""The layout of a trained run, models/<run>/: file names, finding runs by name or age, and
which folder a train stage writes or resumes (its summary.json: ``pipeline.summary``).

Written by the train stage, read by evaluate, predict and experiments; light to import
(no TensorFlow), so a stage can fail on bad input before TensorFlow starts.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from pipeline.config import CONFIG_FILE, Config, ConfigError, dataset_name, with_overrides

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
LABELS_FILE = "labels.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "learning_curves.png"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"  # finished phases, so that a restarted run skips them
CHECKPOINTS_DIR = "checkpoints"  # each phase's best weights
BACKUP_DIR = "backup"  # each phase's per-epoch backup, removed once the phase is finished
# Options that may change between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = ("train.run_name", "train.strategy", "train.xla", "train.tensorboard")


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
        # An absolute run is the same folder both ways: the message names it once.
        candidates = list(dict.fromkeys((Path(run), Path(models_dir) / run)))
        for candidate in candidates:
            if (candidate / MODEL_FILE).is_file():
                return candidate
        raise FileNotFoundError(
            f"Run {run!r}: no {MODEL_FILE} in {' or '.join(map(str, candidates))}; "
            f"give RUN=<folder under {models_dir}/> of a finished `make train`"
        )
    runs = find_runs(models_dir)
    if not runs:
        raise FileNotFoundError(
            f"No finished run under {models_dir}/: run `make train` first (or give RUN=...)"
        )
    return runs[-1]


def has_progress(work_dir: Path) -> bool:
    """Whether a run folder holds a finished epoch worth resuming."""
    return (work_dir / STATE_FILE).is_file() or (work_dir / HISTORY_FILE).is_file()


def _flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}


def config_differences(saved: Path, cfg: Config) -> list[str]:
    """The options (section.key) in which cfg differs from a run's saved config.json,
    besides those a resumed run may change and the paths."""
    old = _flat(json.loads(saved.read_text(encoding="utf-8")))
    new = _flat(cfg.to_dict())
    return sorted(
        k
        for k in new
        if k not in RESUMABLE_CHANGES and not k.startswith("paths.") and old.get(k) != new[k]
    )


def _folder_name(text: str) -> str:
    """``text`` as train.run_name accepts it: a data set folder called 'my photos' names
    its runs 'my_photos-...'.

    >>> _folder_name("my photos (2024)")
    'my_photos_2024_'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._-") or "data"


def resolve_run_dir(cfg: Config, role_dir: str = "") -> tuple[Path, Config, bool]:
    """models/<run>: the named run, the newest unfinished run of the same configuration
    (resumed), or a new <dataset>-<backbone>-<time> folder. (run folder, cfg with the run
    name filled in, resumed?). ``role_dir``: a non-chief worker's own sub-folder."""
    models = Path(cfg.paths.models)
    name = cfg.train.run_name
    if name:
        run_dir = models / name
        own = run_dir / role_dir
        if (own / SUMMARY_FILE).is_file():
            raise ConfigError(
                f"{run_dir} holds a finished run; choose another RUN_NAME (train.run_name) "
                "or delete that folder to train it again"
            )
        saved = own / CONFIG_FILE
        if saved.is_file() and not has_progress(own):
            print(f"{run_dir}: the earlier attempt stopped before its first epoch; starting afresh")
            return run_dir, cfg, False
        if saved.is_file():
            differences = config_differences(saved, cfg)
            if differences:
                raise ConfigError(
                    f"{run_dir} is an unfinished run with other options ({', '.join(differences)}"
                    f"); rerun with its options ({saved}) to resume it, or choose another RUN_NAME"
                )
            return run_dir, cfg, True
        return run_dir, cfg, False
    prefix = f"{_folder_name(dataset_name(cfg.data.dataset))}-{cfg.model.backbone}-"
    for run_dir in sorted(models.glob(prefix + "*"), reverse=True):
        saved = run_dir / CONFIG_FILE
        if (
            saved.is_file()
            and not (run_dir / SUMMARY_FILE).is_file()
            and not config_differences(saved, cfg)
        ):
            print(
                f"Found an unfinished run with the same options: {run_dir} (RUN_NAME=... "
                "starts a new one instead)"
            )
            return run_dir, with_overrides(cfg, {"train.run_name": run_dir.name}), True
    name = prefix + time.strftime("%Y%m%d-%H%M%S")
    return models / name, with_overrides(cfg, {"train.run_name": name}), False
