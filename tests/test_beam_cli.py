"""`python -m pipeline.beam` without Beam installed, and how it splits its arguments: no
apache_beam needed (this file runs in `make test` too; tests/test_beam.py runs the pipelines)."""

from __future__ import annotations

import subprocess
import sys

from pipeline.beam.__main__ import split_arguments
from tests.support import REPO

WITHOUT_BEAM = (
    "import sys; sys.modules['apache_beam'] = None; "  # import apache_beam now raises
    "from pipeline.beam.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


def test_without_beam_one_line_says_how_to_install(tmp_path):
    for stage in ("check", "predict"):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_BEAM, stage, f"predict.input={tmp_path}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "Apache Beam is not installed" in lines[0]
        assert "pip install -e '.[beam]'" in lines[0]


def test_beam_options_are_separated_from_ours():
    ours, beam = split_arguments(
        [
            "predict",
            "--config",
            "my.toml",
            "predict.input=photos",
            "--runner=DataflowRunner",
            "--output=out.csv",
            "--project=p",
            "--",
            "--region=europe-west1",
            "--temp_location=gs://b/tmp",
        ]
    )
    assert ours == ["predict", "--config", "my.toml", "predict.input=photos", "--output=out.csv"]
    assert beam == [
        "--runner=DataflowRunner",
        "--project=p",
        "--region=europe-west1",
        "--temp_location=gs://b/tmp",
    ]
