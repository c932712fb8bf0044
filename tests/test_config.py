"""Configuration: defaults < file < overrides, unknown names rejected with the valid list."""

from __future__ import annotations

import json

import pytest

from pipeline.config import (
    Config,
    ConfigError,
    load_config,
    options_markdown,
    save_config,
    with_overrides,
)
from tests.support import REPO, make_variables


def test_precedence_file_then_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[input]\nimage_size = 150\nbatch_size = 8\n[train]\nhead_lr = 0.01\n")
    cfg = load_config(toml, ["input.batch_size=4", "train.xla=true", "data.dataset=folder:x"])
    assert cfg.input.image_size == 150 and cfg.input.batch_size == 4
    assert cfg.train.head_lr == 0.01 and cfg.train.xla is True
    assert cfg.model.backbone == Config().model.backbone  # untouched default
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  backbone: mobilenet\n  alpha: 0.25\n")
    assert load_config(yaml_file).model.alpha == 0.25


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.seed=7", "input.flip=false"])
    path = save_config(cfg, tmp_path / "config.json")
    assert load_config(path) == cfg
    assert json.loads(path.read_text())["train"]["seed"] == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bogus=1", "Unknown option train.bogus.*Valid options: train.seed"),
        ("nope.x=1", "Unknown configuration section 'nope'"),
        ("input.image_size=big", "input.image_size expects an integer. Received: 'big'"),
        ("input.flip=maybe", "input.flip expects true or false"),
        ("train.precision=fp8", "train.precision must be one of auto, float32"),
        ("input.image_size=60", "at least 75 for inception_v3"),
        ("input.image_size=-1", "must be 0 .* or at least 75"),
        ("model.backbone=vgg", "model.backbone must be one of"),
        ("data.dataset=cifar", "data.dataset must be flowers, intel or folder:PATH"),
        ("image_size", "Overrides are written section.key=value"),
    ],
)
def test_bad_options_are_rejected_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_default_input_size_follows_the_backbone():
    """0 means the backbone's ImageNet size, also when a grid switches backbones later."""
    inception = load_config(None, [])
    assert inception.input.image_size == 0 and inception.image_size == 299
    assert with_overrides(inception, {"model.backbone": "mobilenet"}).image_size == 224
    assert load_config(None, ["model.backbone=mobilenet", "input.image_size=160"]).image_size == 160


def test_unset_fine_tune_epochs_are_the_backbones_own_and_a_set_value_wins():
    inception = load_config(None, [])
    assert inception.train.fine_tune_epochs is None and inception.fine_tune_epochs == 10
    lite = with_overrides(inception, {"model.backbone": "efficientnet_lite0"})
    assert lite.fine_tune_epochs == 6
    assert with_overrides(lite, {"train.fine_tune_epochs": 0}).fine_tune_epochs == 0
    assert with_overrides(lite, {"train.fine_tune_epochs": 10}).fine_tune_epochs == 10


def test_with_overrides_copies():
    cfg = Config()
    other = with_overrides(cfg, {"train.seed": 3})
    assert other.train.seed == 3 and cfg.train.seed == 42


def test_readme_option_table_is_the_one_config_declares():
    """The README's table between its markers is exactly options_markdown(): an option added,
    renamed, re-defaulted or given new choices in config.py without the README fails here."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- options:begin -->\n", "<!-- options:end -->"
    assert begin in readme and end in readme
    table = readme[readme.index(begin) + len(begin) : readme.index(end)].strip()
    expected = options_markdown(make_variables())
    assert len(make_variables()) > 20  # the Makefile's overrides were found
    assert table == expected, (
        "README.md's option table differs from pipeline/config.py and the Makefile; put "
        f"this between its options markers:\n{expected}"
    )


def test_choices_come_from_the_declared_types():
    for key, value in (("train.precision", "fp8"), ("export.format", "onnx"), ("input.tta", "x")):
        with pytest.raises(ConfigError, match=rf"{key} must be one of .*Received: '{value}'"):
            load_config(None, [f"{key}={value}"])
