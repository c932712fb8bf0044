"""The CPU run-time forecast `make train` prints, from the rates shipped with the package."""

from __future__ import annotations

import re

import pytest

from pipeline.backbones import BACKBONES
from pipeline.training.forecast import FAST_BACKBONE, forecast_lines, load_rates


def _minutes(line: str) -> int:
    hours, minutes = re.search(r"about (?:(\d+) h )?(\d+) min", line).groups()
    return int(hours or 0) * 60 + int(minutes)


def test_the_shipped_rates_cover_the_default_and_the_fast_backbone():
    cores, rates = load_rates()
    assert cores >= 1
    for name in ("inception_v3", FAST_BACKBONE):
        assert rates[name].size == BACKBONES[name].default_size
        assert rates[name].features_per_s > 0 and rates[name].phase2_per_s > 0


def test_a_long_run_names_the_fast_backbone_with_its_own_time():
    # flowers at full size: 3,670 photos, 70% of them trained on for 10 epochs.
    lines = forecast_lines("inception_v3", 299, 3670, train=2569, val=550, epochs=10, cores=2)
    assert len(lines) == 2
    assert lines[0].startswith("On this CPU (2 cores, no GPU) this run should take up to about")
    assert f"BACKBONE={FAST_BACKBONE}" in lines[1]
    assert _minutes(lines[1]) < _minutes(lines[0])


def test_unset_epochs_time_each_backbone_at_its_own_recipes_epochs():
    counts = ("inception_v3", 299, 3670, 2569, 550)
    own = forecast_lines(*counts, epochs=None, cores=2)
    ten = forecast_lines(*counts, epochs=BACKBONES["inception_v3"].fine_tune_epochs, cores=2)
    assert own[0] == ten[0]  # InceptionV3's own is the 10 asked for
    assert BACKBONES[FAST_BACKBONE].fine_tune_epochs < 10
    assert _minutes(own[1]) < _minutes(ten[1])  # the fast backbone at its own, fewer epochs


def test_a_short_run_and_the_fast_backbone_suggest_nothing_else():
    assert len(forecast_lines("inception_v3", 299, 40, train=28, val=6, epochs=1, cores=2)) == 1
    assert len(forecast_lines(FAST_BACKBONE, 224, 3670, 2569, 550, 10, cores=2)) == 1


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet50"])
def test_no_forecast_without_a_measured_rate(backbone):
    assert forecast_lines(backbone, 224, 400, 280, 60, 10, cores=2) == []
