"""Helpers several test modules share (not a test module: test files import this one, never
each other, and never conftest)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.recipes import configs_dir

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
CONFIGS = configs_dir()  # pipeline/configs/, as the package finds it
# Lines TensorFlow's C++ side prints while it starts: abseil's notice and glog-style lines
# ("I0000 00:00:... cpu_feature_guard.cc:227] ...", "E0000 ... cuda_dnn.cc", oneDNN).
MAKE_OVERRIDE = re.compile(r"\$\(call override,(\w+),([\w.]+)\)")


def make_variables() -> dict[str, str]:
    """option -> the Make variable that sets it, from the Makefile's OVERRIDES."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return {option: variable for variable, option in MAKE_OVERRIDE.findall(text)}


NOISE = re.compile(r"absl::InitializeLog|^[IWE]\d{4} |cpu_feature_guard|oneDNN", re.MULTILINE)


# ----------------------------------------------------------------------------- tiny data


@dataclass
class TinyData:
    root: Path
    overrides: list[str]

    def cfg(self, *extra: str):
        from pipeline.config import load_config

        return load_config(None, [*self.overrides, *extra])


TINY_SPLIT = {"train": 12, "val": 2, "test": 2}  # per class: 60 train, 10 val, 10 test


def make_tiny_data(flowers_mini: Path, root: Path) -> TinyData:
    """A flowers-mini subset (symlinks) through the real data stage, random weights, batches
    of 8. Per class, the first photos by name that the default split sends to each split
    (TINY_SPLIT of each), so every class is in every split whatever the photos' bytes."""
    from pipeline.config import Config, load_config
    from pipeline.data.split import split_of
    from pipeline.data.stage import prepare_data
    from pipeline.images import file_sha256

    d = Config().data
    folder = root / "flowers-tiny"
    for class_dir in sorted(p for p in flowers_mini.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        wanted = dict(TINY_SPLIT)
        for image in sorted(class_dir.iterdir()):
            split = split_of(file_sha256(image), d.split_seed, d.val_fraction, d.test_fraction)
            if wanted[split] > 0:
                wanted[split] -= 1
                (folder / class_dir.name / image.name).symlink_to(image)
        assert not any(wanted.values()), f"{class_dir}: too few photos for {TINY_SPLIT}"
    overrides = [
        f"data.dataset=folder:{folder}",
        f"paths.data={root / 'data'}",
        f"paths.models={root / 'models'}",
        f"paths.reports={root / 'reports'}",
        "model.weights=none",
        "input.batch_size=8",
    ]
    result = prepare_data(load_config(None, overrides), progress=False)
    assert all(c == TINY_SPLIT for c in result.counts.values()), result.counts
    return TinyData(root, overrides)


# ----------------------------------------------------------------------------- make

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


# The Make variables that become overrides: unset in the tests' environment, so that a NAME
# or RUN the caller happens to export cannot leak in.
MAKE_VARIABLES = {*make_variables().values(), "ARGS", "CONFIG", "MEMORY_ARGS"}


def run_make(*args: str, venv: Path | None = None, python: str | None = None):
    """`make -C <repo> ARGS...` with this interpreter's environment as VENV; never installs.

    VENV is this interpreter's prefix (the repository's .venv under `make test`), and `-o`
    tells make the install stamp is up to date, so a test never starts pip.
    """
    venv = Path(sys.prefix) if venv is None else venv
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # under `make test`
        env.pop(k, None)
    cmd = ["make", "-s", "--no-print-directory", "-C", str(REPO), "ACCEL=cpu", f"VENV={venv}"]
    cmd += ["-o", f"{venv}/.installed-cpu"]
    if python is not None:
        cmd.append(f"PYTHON={python}")
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, encoding="utf-8", env=env, timeout=120
    )


# ----------------------------------------------------------------------------- datasets


def train_dataset(rows, cfg, num_classes: int, seed: int | None = None, **kwargs):
    """build_train_dataset for a configuration, as the train stage calls it."""
    from pipeline.inputs import build_train_dataset
    from pipeline.model import classifier_spec

    spec = classifier_spec(cfg)
    seed = cfg.train.seed if seed is None else seed
    return build_train_dataset(
        rows, cfg.input, spec.size, num_classes, seed, backbone=spec.backbone, **kwargs
    )


def eval_dataset(rows, cfg, num_classes: int | None = None, **kwargs):
    """build_eval_dataset for a configuration, preprocessed for its backbone."""
    from pipeline.inputs import build_eval_dataset
    from pipeline.model import classifier_spec

    spec = classifier_spec(cfg)
    return build_eval_dataset(
        rows, cfg.input, spec.size, backbone=spec.backbone, num_classes=num_classes, **kwargs
    )


def make_config(tmp_path: Path, dataset: str, *extra: str):
    """A data-stage configuration writing under tmp_path, with small images and large
    validation and test fractions, so that a few dozen files fill every split."""
    from pipeline.config import load_config

    return load_config(
        None,
        [
            f"data.dataset={dataset}",
            f"paths.data={tmp_path / 'data'}",
            f"paths.reports={tmp_path / 'reports'}",
            "input.image_size=75",
            "input.batch_size=8",
            "data.val_fraction=0.3",
            "data.test_fraction=0.3",
            *extra,
        ],
    )
