"""The command line as a user runs it: a real subprocess, real output, real exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pipeline.cli import STAGES
from tests.imagegen import make_image
from tests.support import NOISE, REPO


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS...` from this checkout (PYTHONPATH), whatever cwd is, never
    from another copy an editable install happens to point at."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_stage_with_its_description():
    result = run_cli("--help")
    assert result.returncode == 0
    for name, (description, _, _) in STAGES.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(description[:30])}", result.stdout, re.M), name


def test_bad_option_is_one_line_error_with_exit_2():
    result = run_cli("data", "input.imagesize=128")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Unknown option input.imagesize" in lines[0]
    assert "input.image_size" in lines[0]


def test_data_stage_runs_and_says_what_it_found(tmp_path):
    for c, label in enumerate(("a", "b")):
        for i in range(12):
            make_image(tmp_path / "photos" / label / f"{i}", "rgb_jpeg", seed=10 * c + i)
    make_image(tmp_path / "photos" / "a" / "broken", "truncated_jpeg")
    result = run_cli(
        "data",
        f"data.dataset=folder:{tmp_path / 'photos'}",
        "data.val_fraction=0.3",
        "data.test_fraction=0.3",
        "input.image_size=75",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Found 25 files in 2 class folders" in result.stdout
    assert "Skipped 1 file(s): 1 truncated or corrupt" in result.stdout
    (manifests,) = (tmp_path / "data").glob("photos-*/train.csv")  # named by the source
    name = manifests.parent.name
    assert f"Manifests written to data/{name}/" in result.stdout
    assert (tmp_path / "reports" / name / "augmented_samples.jpg").is_file()
    # The stage imports TensorFlow itself, only for its sample grid: quietly all the same.
    assert not NOISE.search(result.stderr), result.stderr[:2000]


def test_missing_source_error_is_actionable(tmp_path):
    result = run_cli("data", "data.dataset=intel", cwd=tmp_path)
    assert result.returncode == 2
    assert "kaggle datasets download -d puneet6060/intel-image-classification" in result.stderr
