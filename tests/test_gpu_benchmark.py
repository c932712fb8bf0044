"""benchmarks/gpu.py's dry run on a CPU: every section the GPU run measures runs, tiny.

The GPU run itself needs an NVIDIA GPU (benchmarks/README.md, 'GPU'); this keeps its code paths
working in the meantime: both precision policies with and without XLA, the input
pipeline, MirroredStrategy over two logical CPU devices, the memory figures, the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.slow  # five small models traced and two XLA compilations


def run_gpu_benchmark(out, *arguments: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU run even on a GPU machine
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(out), *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def test_dry_run_measures_every_section(tmp_path):
    r = run_gpu_benchmark(tmp_path / "gpu.json")
    assert r["dry_run"] and r["errors"] == [] and r["skipped"] == []
    assert r["setup"]["photos"].endswith("tests/fixtures/flowers-mini")  # never ../shared
    runs = {(t["precision"], t["xla"]): t for t in r["training"]}
    assert set(runs) == {(p, x) for p in ("float32", "mixed_float16") for x in (False, True)}
    assert runs["float32", False]["compute_dtype"] == "float32"
    assert runs["mixed_float16", False]["compute_dtype"] == "float16"
    for t in r["training"]:
        assert t["images_per_second"] > 0 and t["replicas"] == 1
        memory = t["memory"]
        assert memory["estimate_bytes"] > memory["simulated_fixed"] > 0
    mirrored = r["mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["global_batch"] == 2 * r["setup"]["batch"]
    assert mirrored["images_per_second"] > 0
    assert r["input"]["images"] == 48 and r["input"]["images_per_second"] > 0
    assert r["input"]["share_of_training_rate"] > 0


def test_a_run_over_budget_records_what_it_skipped(tmp_path):
    r = run_gpu_benchmark(tmp_path / "gpu.json", "--budget", "1")
    assert r["training"] == [] and r["mirrored"] is None and r["input"] is None
    assert len(r["skipped"]) == 6  # four training configurations, input, mirrored
