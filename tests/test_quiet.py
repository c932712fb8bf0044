"""Start-up is quiet: TensorFlow's C++ start-up lines appear only with --verbose."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.support import REPO

# Lines TensorFlow's C++ side prints while it starts: abseil's notice and glog-style lines
# ("I0000 00:00:... cpu_feature_guard.cc:227] ...", "E0000 ... cuda_dnn.cc", oneDNN).
NOISE = re.compile(r"absl::InitializeLog|^[IWE]\d{4} |cpu_feature_guard|oneDNN", re.MULTILINE)


def memory_stage(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    stage = ["memory", "model.backbone=small_cnn", "--no-table", *flags]
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *stage, f"paths.reports={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_start_up_noise_is_hidden_by_default_and_shown_with_verbose(tmp_path):
    quiet = memory_stage(tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.startswith("# Memory and compute estimate")
    assert not NOISE.search(quiet.stderr), quiet.stderr[:2000]
    verbose = memory_stage(tmp_path, "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert NOISE.search(verbose.stderr), "--verbose showed no TensorFlow start-up line"
