"""Memory per image, measured against the estimate: real training steps, one process each.

    python benchmarks/memory.py [--batches 4,8,16,32,64] [--steps 2]
        [--cases inception_v3:128:2,inception_v3:128:all,small_cnn:64:1]

A case is backbone:image size:phase, where the phase is 1 (base frozen), 2 (layers after
the backbone's cut point train) or all (every layer but BatchNorm trains). For each case
and batch size a fresh process builds the classifier with the pipeline's own code
(``build_classifier``, ``freeze_for_phase``, without pretrained weights), compiles it with
Adam and runs a few ``train_on_batch`` steps on random images, then reports its peak
memory: peak resident memory (VmHWM) on a CPU, ``tf.config.experimental.get_memory_info``
peak on a GPU. A straight line through peak memory against batch size gives the measured
memory per extra image (its slope), which is compared with the estimator's simulated
per-image figure. measured / simulated is the framework overhead; its geometric mean over
the cases is what ``pipeline.memory.CPU_OVERHEAD`` records. Prints a table and writes
benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.files import write_json  # noqa: E402
from pipeline.memory import CPU_OVERHEAD  # noqa: E402
from pipeline.units import format_bytes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "memory.json"
DEFAULT_CASES = "inception_v3:128:2,inception_v3:128:all,small_cnn:64:1"
NUM_CLASSES = 5
MiB = 2**20


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(backbone: str, size: int, phase: str, batch: int, steps: int) -> dict:
    """One measurement, in this (fresh) process: build, compile, train, report the peak."""
    import numpy as np
    import tensorflow as tf

    from pipeline.config import Config, with_overrides
    from pipeline.memory import realistic_training, textbook_training
    from pipeline.memory.keras_graph import layers_from_model
    from pipeline.memory.liveness import training_flops
    from pipeline.model import build_classifier, classifier_spec, freeze_for_phase, get_base

    cfg = with_overrides(
        Config(), {"model.backbone": backbone, "input.image_size": size, "model.weights": "none"}
    )
    model = build_classifier(classifier_spec(cfg), NUM_CLASSES)
    if phase == "all":  # cut after the base's input layer: every layer trains (BatchNorm not)
        cfg = with_overrides(cfg, {"model.fine_tune_after": get_base(model).layers[0].name})
    freeze_for_phase(model, classifier_spec(cfg), 1 if phase == "1" else 2)
    rows = layers_from_model(model)
    simulated = realistic_training(rows, batch, overhead=1.0)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = np.eye(NUM_CLASSES, dtype="float32")[np.arange(batch) % NUM_CLASSES]
    gpu = bool(tf.config.list_physical_devices("GPU"))
    before = _peak_rss()
    model.train_on_batch(x, y)  # traces the step
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / steps
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else _peak_rss()
    return {
        "batch": batch,
        "peak_bytes": int(peak),
        "rss_before_training": before,
        "memory": "GPU peak (get_memory_info)" if gpu else "peak RSS (VmHWM)",
        "simulated_per_image": simulated["per_image"],
        "simulated_fixed": simulated["fixed"],
        "textbook_per_image": textbook_training(rows, 1)["total"]
        - textbook_training(rows, 0)["total"],
        "trainable": simulated["gradients"] // 4,
        "seconds_per_step": seconds,
        "flops_per_second": training_flops(rows) * batch / seconds,
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def measure_case(case: str, batches: list[int], steps: int) -> dict:
    backbone, size, phase = case.split(":")
    points = []
    for batch in batches:
        command = [
            sys.executable,
            __file__,
            "--child",
            case,
            "--batch",
            str(batch),
            "--steps",
            str(steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{case} batch {batch} failed:\n{done.stderr[-2000:]}")
        points.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(
            f"  {case} batch {batch}: peak {points[-1]['peak_bytes'] / MiB:,.0f} MiB, "
            f"{points[-1]['seconds_per_step']:.2f} s/step",
            flush=True,
        )
    slope, intercept = fit_line([p["batch"] for p in points], [p["peak_bytes"] for p in points])
    simulated = points[0]["simulated_per_image"]
    estimate = simulated * CPU_OVERHEAD
    return {
        "case": case,
        "backbone": backbone,
        "image_size": int(size),
        "phase": phase,
        "points": points,
        "measured_per_image": slope,
        "intercept": intercept,
        "simulated_per_image": simulated,
        "textbook_per_image": points[0]["textbook_per_image"],
        "overhead": slope / simulated,
        "estimate_per_image": estimate,
        "relative_error": (estimate - slope) / slope,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--batches", default="4,8,16,32,64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backbone, size, phase = args.child.split(":")
        print(json.dumps(run_child(backbone, int(size), phase, args.batch, args.steps)))
        return
    batches = [int(b) for b in args.batches.split(",")]
    if len(batches) < 2:
        parser.error("--batches needs at least two sizes to fit a line, e.g. 4,8,16,32")
    results = []
    for case in args.cases.split(","):
        print(f"{case}: batches {batches}, {args.steps} steps each, one process per batch")
        results.append(measure_case(case, batches, args.steps))
    overhead = math.exp(sum(math.log(r["overhead"]) for r in results) / len(results))
    header = (
        f"{'case':<24}{'measured/img':>14}{'textbook/img':>14}{'simulated/img':>15}"
        f"{'ratio':>7}{'estimate/img':>14}{'error':>8}"
    )
    print("\n" + header)
    for r in results:
        print(
            f"{r['case']:<24}{r['measured_per_image'] / MiB:>10.2f} MiB"
            f"{r['textbook_per_image'] / MiB:>10.2f} MiB{r['simulated_per_image'] / MiB:>11.2f} MiB"
            f"{r['overhead']:>7.2f}{r['estimate_per_image'] / MiB:>10.2f} MiB"
            f"{r['relative_error']:>+8.0%}"
        )
    print(
        f"\nGeometric-mean overhead (measured / simulated): {overhead:.2f}; "
        f"pipeline.memory.CPU_OVERHEAD = {CPU_OVERHEAD}. Intercepts (runtime + model): "
        + ", ".join(f"{r['case']} {format_bytes(r['intercept'])}" for r in results)
    )
    write_json(
        RESULTS,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "memory": results[0]["points"][0]["memory"],
            "cpu_overhead_constant": CPU_OVERHEAD,
            "fitted_overhead": overhead,
            "cases": results,
        },
    )
    print(f"Wrote {RESULTS}")


if __name__ == "__main__":
    main()
