"""Experiment presets are data (pipeline/configs/presets/*.toml): each one loads, applies and
plans, and ships with the package."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import PREPARE
from pipeline.config import ConfigError, load_config
from pipeline.experiment import experiment_plan, load_preset, parse_grid, preset_names
from pipeline.experiment.presets import PRESETS_DIR, apply_preset, with_preset
from tests.support import REPO


def test_the_preset_folder_holds_the_classic_sweeps():
    assert {"width", "depth", "dropout", "epochs"} <= set(preset_names())
    assert all(path.suffix == ".toml" for path in PRESETS_DIR.iterdir())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_file_builds_a_valid_plan(name):
    preset = load_preset(name)
    assert preset.about and preset.grid and preset.fixed
    # IMAGE_SIZE=64 is below InceptionV3's 75: valid only once the preset's backbone applies.
    cfg = load_config(None, [f"experiment.preset={name}", "input.image_size=64"], with_preset)
    for key, value in preset.fixed.items():
        section, _, option = key.partition(".")
        assert getattr(getattr(cfg, section), option) == value
    experiment, base, cells = experiment_plan(cfg)
    assert experiment == name and base.model.backbone == cfg.model.backbone
    assert len(cells) == math.prod(len(values) for _, values in parse_grid(preset.grid))


def test_the_experiment_stage_applies_its_preset_before_validation():
    overrides = ["experiment.preset=width", "input.image_size=64"]
    cfg = load_config(None, overrides, PREPARE["experiment"])
    assert cfg.model.backbone == "small_cnn" and cfg.train.fine_tune_epochs == 0
    with pytest.raises(ConfigError, match="at least 75 for inception_v3"):
        load_config(None, overrides)  # other stages: no preset, the default backbone


def test_grid_replaces_the_presets_and_fixed_values_win():
    cfg = load_config(None, ["experiment.preset=epochs", "train.patience=2"])
    base, grid = apply_preset(cfg)
    assert grid == "train.head_epochs=2,5,10" and base.train.patience == 1000
    cfg = load_config(None, ["experiment.preset=epochs", "experiment.grid=model.dropout=0,0.5"])
    assert apply_preset(cfg)[1] == "model.dropout=0,0.5"


def test_unknown_preset_lists_the_files_there_are():
    cfg = load_config(None, ["experiment.preset=widht"])  # config itself knows no presets
    with pytest.raises(ConfigError, match=r"experiment\.preset must be one of depth, .*width"):
        experiment_plan(cfg)
    with pytest.raises(ConfigError, match=r"Received: '\.\./width'"):
        load_preset("../width")


def test_a_new_preset_is_just_a_file(tmp_path):
    (tmp_path / "lr.toml").write_text(
        '[preset]\nabout = "head learning rate"\ngrid = "train.head_lr=1e-3,1e-2"\n'
        "[train]\nfine_tune_epochs = 0\n"
    )
    preset = load_preset("lr", tmp_path)
    assert preset.fixed == {"train.fine_tune_epochs": 0} and not preset.smallest_first
    (tmp_path / "bad.toml").write_text('[preset]\ngrid = "x"\nsteps = 3\n')
    with pytest.raises(ConfigError, match="Received: steps"):
        load_preset("bad", tmp_path)


def test_presets_and_recipes_ship_in_the_installed_package(tmp_path):
    """A non-editable install (the wheel pip builds from pyproject.toml) carries
    pipeline/configs/; from another folder, the presets and `--config configs/transfer.toml`
    are found in the installed package."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--target", str(site), str(src)]  # setuptools: a dev extra
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr[-3000:]
    code = (
        "import json, pipeline\n"
        "from pipeline.config import load_config\n"
        "from pipeline.experiment.presets import PRESETS_DIR, preset_names\n"
        "cfg = load_config('configs/transfer.toml')\n"
        "print(json.dumps([pipeline.__file__, str(PRESETS_DIR), preset_names(), cfg.image_size]))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    init, presets, names, image_size = json.loads(done.stdout.splitlines()[-1])
    assert Path(init) == site / "pipeline" / "__init__.py"
    assert Path(presets) == site / "pipeline" / "configs" / "presets"
    assert {"width", "depth", "dropout", "epochs"} <= set(names) and image_size == 224
    # The other package data: make train's CPU rates and the report's style sheet.
    assert (site / "pipeline" / "configs" / "cpu_rates.json").is_file()
    assert (site / "pipeline" / "evaluate" / "report.css").is_file()
