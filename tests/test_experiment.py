"""Experiments: every run of a grid recorded, resumable, summaries that equal numpy's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import ConfigError, with_overrides
from pipeline.experiment import (
    expand_grid,
    parse_grid,
    read_results,
    run_experiment,
    summarize,
    within_noise,
    write_results,
)
from pipeline.experiment.stats import ConfigSummary, mean_ci, verdict
from pipeline.files import read_csv, write_csv


def test_grid_parsing_and_expansion():
    axes = parse_grid("model.backbone=mobilenet,inception_v3 train.head_lr=1e-3,3e-4")
    assert axes == [
        ("model.backbone", ["mobilenet", "inception_v3"]),
        ("train.head_lr", ["1e-3", "3e-4"]),
    ]
    cells = expand_grid(axes)
    assert len(cells) == 4 and cells[1] == {"model.backbone": "mobilenet", "train.head_lr": "3e-4"}
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_grid("backbone=mobilenet")


def test_noise_test_tells_apart_real_differences():
    assert within_noise([0.80, 0.81, 0.79], [0.80, 0.78, 0.81])[0]
    assert not within_noise([0.90, 0.91, 0.905], [0.70, 0.71, 0.705])[0]


def test_the_verdict_names_the_best_configuration_and_says_when_it_is_noise():
    def config(name: str, values: list[float]) -> ConfigSummary:
        metrics = {"test_accuracy": mean_ci(values)}
        return ConfigSummary("cpu", name, len(values), 0, [], metrics, values)

    clear = verdict([config("a", [0.70, 0.71, 0.705]), config("b", [0.90, 0.91, 0.905])])
    assert (clear["best"], clear["runner_up"], clear["within_noise"]) == ("b", "a", False)
    close = verdict([config("a", [0.80, 0.81, 0.79]), config("b", [0.80, 0.78, 0.81])])
    assert close["best"] == "a" and close["within_noise"]
    assert "within the noise" in close["sentence"]
    assert verdict([config("a", [])])["best"] is None


@pytest.fixture(scope="module")
def experiment(flowers_prepared, tmp_path_factory):
    cfg, _ = flowers_prepared
    cfg = with_overrides(
        cfg,
        {
            "paths.models": str(tmp_path_factory.mktemp("exp_models")),
            "paths.reports": str(tmp_path_factory.mktemp("exp_reports")),
            "model.backbone": "small_cnn",
            "input.image_size": 32,
            "train.head_epochs": 1,
            "train.fine_tune_epochs": 0,
            "experiment.name": "grid",
            # The weights file does not exist: the from-scratch CNN never reads it, MobileNet
            # does, so the mobilenet cells fail at training time and the others must complete.
            "model.weights": "/nonexistent/weights.h5",
            "model.cnn_blocks": 2,
            "experiment.grid": "model.backbone=small_cnn,mobilenet model.dropout=0.0,0.5",
            "experiment.repeats": 2,
        },
    )
    return cfg, run_experiment(cfg)


@pytest.mark.slow  # the experiment fixture: four trainings, about 70 s on 2 cores
def test_every_run_is_recorded_and_failures_do_not_stop_the_rest(experiment):
    _, result = experiment
    rows = read_csv(result.out_dir / "results.csv")
    assert len(rows) == 8 and result.ran == 8
    assert len({(r["cell"], r["seed"]) for r in rows}) == 8
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4 and all("model.backbone=mobilenet" in r["overrides"] for r in failed)
    assert all(r["error"] for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and float(r["train_seconds"]) > 0
        assert int(r["parameters"]) > 0 and r["device"] and r["tensorflow"]
    summary_md = (result.out_dir / "summary.md").read_text()
    assert "(best)" in summary_md and "failed runs of model.backbone=mobilenet" in summary_md
    for name in ("accuracy_vs_time.png", "spread.png"):
        assert (result.out_dir / name).is_file()


@pytest.mark.slow  # the experiment fixture: four trainings, about 70 s on 2 cores
def test_resuming_runs_nothing_new(experiment):
    cfg, first = experiment
    before = (first.out_dir / "results.csv").read_bytes()
    again = run_experiment(cfg)
    assert again.ran == 0 and again.skipped == 8
    assert (first.out_dir / "results.csv").read_bytes() == before


@pytest.mark.slow  # the experiment fixture: four trainings, about 70 s on 2 cores
def test_results_read_back_are_written_as_they_were(experiment, tmp_path):
    _, result = experiment
    path = result.out_dir / "results.csv"
    rows = read_results(path)
    assert {r.status for r in rows} == {"ok", "failed"}
    assert all(r.test_accuracy is None and r.parameters is None for r in rows if not r.ok)
    assert write_results(tmp_path / "results.csv", rows).read_bytes() == path.read_bytes()


@pytest.mark.slow  # the experiment fixture: four trainings, about 70 s on 2 cores
def test_summary_statistics_equal_numpy_on_results(experiment):
    _, result = experiment
    rows = read_csv(result.out_dir / "results.csv")
    summary = json.loads((result.out_dir / "summary.json").read_text())
    configs = summary["configurations"]
    assert len(configs) == 4
    checked = 0
    for config in configs:
        ok = [r for r in rows if r["overrides"] == config["overrides"] and r["status"] == "ok"]
        for metric in ("test_accuracy", "test_loss", "train_seconds"):
            values = np.array([float(r[metric]) for r in ok])
            stats = config["metrics"][metric]
            assert stats["n"] == len(values)
            if len(values):
                assert stats["mean"] == pytest.approx(values.mean())
                assert stats["std"] == pytest.approx(values.std(ddof=1))
                checked += 1
    assert checked == 2 * 3  # the two small_cnn cells (mobilenet fails), three metrics each


@pytest.mark.slow  # the experiment fixture: four trainings, about 70 s on 2 cores
def test_results_from_another_machine_are_grouped_by_device(experiment, tmp_path):
    _, result = experiment
    rows = read_csv(result.out_dir / "results.csv")
    other = tmp_path / "gpu-box" / "results.csv"
    faster = [
        {**r, "device": "GPU box", "train_seconds": str(float(r["train_seconds"]) / 4)}
        for r in rows
        if r["status"] == "ok"
    ]
    write_csv(other, list(rows[0]), ([r[k] for k in rows[0]] for r in faster))
    summary = summarize([result.out_dir / "results.csv", other], tmp_path / "merged")
    assert set(summary["verdicts"]) == {rows[0]["device"], "GPU box"}
    gpu = [r for r in summary["across_devices"] if r["device"] == "GPU box"]
    assert len(gpu) == 2 and all(r["speedup_vs_slowest"] == pytest.approx(4.0) for r in gpu)
    assert "## Across devices" in (tmp_path / "merged" / "summary.md").read_text()
