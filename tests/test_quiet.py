"""Start-up is quiet: TensorFlow's C++ start-up lines appear only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.quiet import stderr_without
from tests.support import NOISE, REPO


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


TFLITE_RUN = """
import sys, numpy as np
from pipeline.predict.tflite import TFLiteModel
print(TFLiteModel(sys.argv[1])(np.zeros((1, 8, 8, 3), np.float32)).shape)
"""


@pytest.mark.slow  # two fresh processes that import TensorFlow: 20 s idle, more when loaded
def test_the_xnnpack_notice_is_hidden_unless_verbose(tmp_path):
    """TFLite's C++ "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." (printed when
    the first interpreter allocates) is gone at the default log level, shown at level 0."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    stderr = {}
    for level in ("2", "0"):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": level}
        done = subprocess.run(
            [sys.executable, "-c", TFLITE_RUN, str(path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0 and done.stdout.strip() == "(1, 2)", done.stderr[-2000:]
        stderr[level] = done.stderr
    assert "XNNPACK delegate" not in stderr["2"]
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in stderr["0"]


def test_stderr_without_writes_back_every_other_line(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with stderr_without("INFO: noise"):
        os.write(2, b"kept before\nINFO: noise from C\nkept after\n")
    assert capfd.readouterr().err == "kept before\nkept after\n"
