"""The Makefile as a user runs it: real `make`, Make variables reaching the pipeline intact.

`make config` prints the effective configuration and does no work (about a second).
"""

from __future__ import annotations

import json

import pytest

from tests.support import needs_make, run_make

pytestmark = needs_make


def make_config(*assignments: str) -> dict:
    result = run_make("config", *assignments)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


TRICKY = [
    "~/my photos",
    "fotos ü/写真 ñ",
    "a,b, c",
    "it's mine",
    '$HOME $(x) ${y} `id` \\ "q" #1 ; & | * ?',
    "~/it's ü, a $x",
]


@pytest.mark.parametrize("value", TRICKY)
def test_path_variables_reach_the_pipeline_exactly(value):
    cfg = make_config(
        f"DATASET=folder:{value}",
        f"IN={value}",
        f"OUT={value}.csv",
        f"SORT_INTO={value}",
        f"RUN={value}",
        f"WEIGHTS={value}",
        f"NAME={value}",
        f"RESULTS={value}",
        f"MODEL={value}.tflite",
    )
    assert cfg["data"]["dataset"] == f"folder:{value}"
    assert cfg["predict"]["input"] == value
    assert cfg["predict"]["output"] == f"{value}.csv"
    assert cfg["predict"]["sort_into"] == value
    assert cfg["eval"]["run"] == value
    assert cfg["model"]["weights"] == value
    assert cfg["experiment"]["name"] == value
    assert cfg["experiment"]["results"] == value
    assert cfg["predict"]["model"] == f"{value}.tflite"


def test_format_reaches_the_export_stage():
    assert make_config("FORMAT=tflite-int8")["export"]["format"] == "tflite-int8"


def test_a_value_the_pipeline_refuses_arrives_whole():
    """train.run_name must be a folder name: the error quotes the whole value, one word."""
    result = run_make("config", "RUN_NAME=my run ü")
    assert result.returncode == 2
    assert "train.run_name" in result.stderr and "'my run ü'" in result.stderr


def test_grid_stays_one_override():
    grid = "model.backbone=mobilenet,inception_v3 train.head_lr=1e-3,3e-4"
    assert make_config(f"GRID={grid}")["experiment"]["grid"] == grid


def test_args_is_a_list_of_overrides_and_numbers_still_parse():
    cfg = make_config("ARGS=data.val_fraction=0.2 data.min_side=64", "SEED=7", "IMAGE_SIZE=128")
    assert cfg["data"]["val_fraction"] == 0.2 and cfg["data"]["min_side"] == 64
    assert cfg["train"]["seed"] == 7 and cfg["input"]["image_size"] == 128


def test_config_file_path_may_hold_spaces_and_quotes(tmp_path):
    config = tmp_path / "my config ü, it's.toml"
    config.write_text("[train]\nseed = 1234\n", encoding="utf-8")
    assert make_config(f"CONFIG={config}")["train"]["seed"] == 1234


def test_unset_variables_leave_the_defaults():
    cfg = make_config()
    assert cfg["data"]["dataset"] == "flowers"
    assert cfg["predict"]["input"] == "" and cfg["experiment"]["grid"] == ""
