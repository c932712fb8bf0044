"""GPU readiness in one run of at most 8 minutes: what a GPU machine buys before a session
spends hours on it.

    python benchmarks/gpu.py                      # on an NVIDIA GPU: benchmarks/results/gpu.json
    python benchmarks/gpu.py --dry-run --out /tmp/gpu.json   # any CPU: the tiny version, < 1 min

Measured, each with the pipeline's own code (``build_classifier``, ``freeze_for_phase`` at
phase 2, ``compile_for_training`` and the train stage's step, XLA applied as
``train.xla=true`` applies it):

  training      InceptionV3 at 299 px (no pretrained weights: speed does not depend on the
                values), images/s of the phase-2 step on random images already in memory, in
                float32 and mixed_float16, each with and without XLA; the first steps (graph
                tracing, XLA compilation) are timed apart.
  input         the train stage's input pipeline (``build_train_dataset``: decode, random
                resized crop, flip, preprocessing) on real photos, images/s, against the
                fastest training rate: the share of the GPU the CPUs can feed.
  mirrored      ``MirroredStrategy`` over every visible GPU (two logical CPU devices in the
                dry run), the fastest configuration, the per-replica batch unchanged.
  memory        the estimate (``pipeline.memory.realistic_training``) against the peak of
                ``tf.config.experimental.get_memory_info`` of each training configuration
                (peak RSS in the dry run), and the overhead factor the GPU implies
                (set it as memory.overhead).

Every section is timed against --budget; a section that would not fit is recorded as
skipped, and the JSON is rewritten after each measurement, so a killed run keeps what it
measured. Without a GPU the script runs its dry version (MobileNet 0.25 at 32 px, a few steps):
the figures mean nothing, every code path runs (tests/test_gpu_benchmark.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "gpu.json"
FIXTURE_PHOTOS = REPO / "tests" / "fixtures" / "flowers-mini"  # 400 photos, 160 px
SHARED_PHOTOS = REPO.parent / "shared" / "datasets" / "flowers-2k"  # full-size photos
NUM_CLASSES = 5
PRECISIONS = ("float32", "mixed_float16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help=f"JSON to write (default {RESULTS})")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny CPU version (automatic without a GPU)"
    )
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    p.add_argument("--backbone", default=None, help="default inception_v3 (dry run: mobilenet)")
    p.add_argument("--alpha", type=float, default=None, help="MobileNet width (dry run: 0.25)")
    p.add_argument("--size", type=int, default=None, help="default 299 (dry run: 32)")
    p.add_argument("--batch", type=int, default=None, help="per replica; default 64 (dry run: 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 30 (dry run: 2)")
    p.add_argument("--photos", type=Path, default=None, help="<class>/<image> folder for input")
    p.add_argument("--max-photos", type=int, default=None, help="default 2000 (dry run: 48)")
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> dict[str, Any]:
    """Decide the dry run and split the CPU into two logical devices for it (MirroredStrategy
    needs two devices); both must happen before TensorFlow starts its runtime."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    dry = args.dry_run or not gpus
    if dry and not args.dry_run:
        print("No GPU visible: running the dry version (--dry-run); its figures mean nothing.")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # peaks then mean what they say
    if dry:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    # The dry run's network is built and trained the way InceptionV3 is (a pretrained-style
    # base in inference mode, layers after its cut point training), only tiny: MobileNet
    # 0.25 at 32 px. (small_cnn, trained from scratch, runs its BatchNorm in training mode,
    # and the train stage's XLA step fails on that under MirroredStrategy: "merge_call
    # called while defining a new graph", the moving-average update inside the jit-compiled
    # gradients.)
    defaults = ("mobilenet", 32, 4, 2, 48) if dry else ("inception_v3", 299, 64, 30, 2000)
    names = ("backbone", "size", "batch", "steps", "max_photos")
    chosen = {
        n: getattr(args, n) if getattr(args, n) is not None else d for n, d in zip(names, defaults)
    }
    real = SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else FIXTURE_PHOTOS
    photos = args.photos or (FIXTURE_PHOTOS if dry else real)
    out = args.out or (RESULTS if not dry else Path("/tmp") / "gpu-dry-run.json")
    alpha = args.alpha if args.alpha is not None else (0.25 if dry else 1.0)
    return {
        **chosen,
        "alpha": alpha,
        "dry_run": dry,
        "gpus": len(gpus),
        "photos": photos,
        "out": out,
    }


def pipeline_config(setup: dict[str, Any], precision: str, xla: bool) -> Any:
    from pipeline.backbones import get_backbone
    from pipeline.config import Config, with_overrides

    alpha = {"model.alpha": setup["alpha"]} if get_backbone(setup["backbone"]).has_alpha else {}
    return with_overrides(
        Config(),
        {
            **alpha,
            "model.backbone": setup["backbone"],
            "model.weights": "none",
            "input.image_size": setup["size"],
            "input.batch_size": setup["batch"],
            "train.precision": precision,
            "train.xla": xla,
        },
    )


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_now(gpu: bool, key: str) -> int:
    """Bytes on the busiest GPU (``key`` "current" or "peak" since the last reset of
    ``get_memory_info``), else resident memory (VmRSS) or its peak (VmHWM, never reset)."""
    import tensorflow as tf

    if gpu:
        n = len(tf.config.list_physical_devices("GPU"))
        return max(tf.config.experimental.get_memory_info(f"GPU:{i}")[key] for i in range(n))
    return _proc_status("VmRSS" if key == "current" else "VmHWM")


def reset_peaks(gpu: bool) -> int:
    """Start a fresh peak; returns the bytes already in use (left by earlier models)."""
    import tensorflow as tf

    if gpu:
        for i in range(len(tf.config.list_physical_devices("GPU"))):
            tf.config.experimental.reset_memory_stats(f"GPU:{i}")
    return memory_now(gpu, "current")


def train_rate(setup: dict[str, Any], precision: str, xla: bool, mirrored: bool) -> dict:
    """Images/s of the train stage's phase-2 step on random images, and its memory."""
    import gc

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.memory import CPU_OVERHEAD, realistic_training
    from pipeline.memory.keras_graph import layers_from_model
    from pipeline.model import (
        build_classifier,
        classifier_spec,
        freeze_for_phase,
        get_base,
        training_forward,
    )
    from pipeline.training.loop import _build_train_step, compile_for_training

    keras.backend.clear_session()
    gc.collect()
    gpu = setup["gpus"] > 0
    cfg = pipeline_config(setup, precision, xla)
    devices = tf.config.list_logical_devices("GPU" if gpu else "CPU")
    strategy = (
        tf.distribute.MirroredStrategy([d.name for d in devices])
        if mirrored
        else tf.distribute.get_strategy()
    )
    replicas = strategy.num_replicas_in_sync
    batch, size = setup["batch"] * replicas, setup["size"]
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        before = reset_peaks(gpu)
        with strategy.scope():
            spec = classifier_spec(cfg)
            model = build_classifier(spec, NUM_CLASSES)
            freeze_for_phase(model, spec, 2)
        compile_for_training(model, strategy, 1e-4, cfg.train)
        compute_dtype = get_base(model).compute_dtype  # float16 under mixed_float16
        step = _build_train_step(
            model, training_forward(model, spec.backbone), strategy, batch, None, 0.0, xla
        )
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
        y = np.eye(NUM_CLASSES, dtype="float32")[np.arange(batch) % NUM_CLASSES]
        data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
        batches = iter(strategy.experimental_distribute_dataset(data))
        start = time.perf_counter()
        for _ in range(2):  # tracing, XLA compilation, autotuning
            float(step(next(batches))[0])
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(setup["steps"]):
            loss = step(next(batches))[0]
        float(loss)  # wait for the last step
        seconds = time.perf_counter() - start
        peak = memory_now(gpu, "peak") - before
        rows = layers_from_model(model)
        simulated = realistic_training(rows, setup["batch"], precision, overhead=1.0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    estimate = realistic_training(rows, setup["batch"], precision, overhead=CPU_OVERHEAD)
    return {
        "precision": precision,
        "xla": xla,
        "strategy": "mirrored" if mirrored else "default",
        "replicas": replicas,
        "global_batch": batch,
        "compute_dtype": compute_dtype,
        "first_two_steps_s": round(first, 3),
        "images_per_second": setup["steps"] * batch / seconds,
        "seconds_per_step": seconds / setup["steps"],
        "memory": {
            "measured": "GPU allocator peak (get_memory_info)"
            if gpu
            else "peak RSS (VmHWM, whole process; meaningless but for the code path)",
            "in_use_before_bytes": before,
            "peak_bytes": peak,
            "estimate_bytes": estimate["total"],
            "estimate_over_peak": estimate["total"] / peak if peak else None,
            "simulated_fixed": simulated["fixed"],
            "simulated_per_image": simulated["per_image"],
            # What memory.overhead should be on this GPU: measured per-image bytes over the
            # simulated ones (one batch size, so the fixed part is the estimate's).
            "implied_overhead": (peak - simulated["fixed"])
            / (setup["batch"] * simulated["per_image"])
            if peak and not mirrored
            else None,
        },
    }


def input_rate(setup: dict[str, Any], seconds: float) -> dict:
    """Images/s of the train stage's input pipeline on real photos (CPU work only)."""
    import tensorflow as tf

    from pipeline.data.manifest import ManifestRow
    from pipeline.images import check_images, iter_files
    from pipeline.inputs import build_train_dataset
    from pipeline.model import classifier_spec

    folder = setup["photos"]
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, c) for c in classes for f in iter_files(folder / c)]
    step = max(1, len(files) // setup["max_photos"])  # every class, evenly thinned
    files = files[::step][: setup["max_photos"]]
    checks = check_images([f for f, _ in files], progress=False)
    rows = [
        ManifestRow(
            k.path, c, classes.index(c), k.sha256, k.width, k.height, k.orientation, k.decoder
        )
        for (_, c), k in zip(files, checks)
        if k.status == "ok"
    ]
    cfg = pipeline_config(setup, "float32", False)
    spec = classifier_spec(cfg)
    ds = build_train_dataset(
        rows,
        cfg.input,
        spec.size,
        len(classes),
        cfg.train.seed,
        backbone=spec.backbone,
        batch_size=setup["batch"],
    ).repeat()
    with tf.device("/CPU:0"):
        batches = iter(ds)
        next(batches)  # start the workers
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            count += int(next(batches)[0].shape[0])
        elapsed = time.perf_counter() - start
    return {
        "photos": str(folder),
        "images": len(rows),
        "batch": setup["batch"],
        "cpus": os.cpu_count(),
        "images_per_second": count / elapsed,
        "seconds": elapsed,
    }


class Budget:
    """The run's time limit: a section runs only when its expected cost still fits."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, cost: float) -> bool:
        return self.left() >= cost


def run(setup: dict[str, Any], budget: Budget, results: dict[str, Any], save) -> None:
    """The four sections, in order of value; save() after each measurement."""
    # Expected cost of one training configuration: the dry run's are seconds, a real
    # InceptionV3's (build, XLA compilation, 30 steps) about a minute.
    cost = 3.0 if setup["dry_run"] else 60.0
    for precision in PRECISIONS:
        for xla in (False, True):
            name = f"{precision}{' + XLA' if xla else ''}"
            if not budget.allows(cost):
                results["skipped"].append(f"training {name}: over the time budget")
                continue
            try:
                results["training"].append(train_rate(setup, precision, xla, mirrored=False))
            except Exception as exc:  # one configuration failing must not lose the others
                results["errors"].append(f"training {name}: {type(exc).__name__}: {exc}"[:500])
            save()
    done = results["training"]
    best = max(done, key=lambda r: r["images_per_second"], default=None)
    if budget.allows(cost / 2 + 10):
        results["input"] = input_rate(setup, 2.0 if setup["dry_run"] else 20.0)
        if best:
            results["input"]["share_of_training_rate"] = (
                results["input"]["images_per_second"] / best["images_per_second"]
            )
        save()
    else:
        results["skipped"].append("input: over the time budget")
    if best and budget.allows(cost):
        try:
            mirrored = train_rate(setup, best["precision"], best["xla"], mirrored=True)
            mirrored["scaling_vs_one_device"] = (
                mirrored["images_per_second"] / best["images_per_second"]
            )
            results["mirrored"] = mirrored
        except Exception as exc:
            results["errors"].append(f"mirrored: {type(exc).__name__}: {exc}"[:500])
        save()
    else:
        results["skipped"].append("mirrored: over the time budget or nothing trained")


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{'configuration':<24}{'images/s':>10}{'first 2 steps':>15}{'peak':>12}{'estimate':>12}"
    )
    rows = [*results["training"], *([results["mirrored"]] if results.get("mirrored") else [])]
    for r in rows:
        name = f"{r['precision']}{' + XLA' if r['xla'] else ''}"
        if r["strategy"] == "mirrored":
            name += f" x{r['replicas']} mirrored"
        m = r["memory"]
        print(
            f"{name:<24}{r['images_per_second']:>10.1f}{r['first_two_steps_s']:>13.1f} s"
            f"{m['peak_bytes'] / 2**20:>8.0f} MiB{m['estimate_bytes'] / 2**20:>8.0f} MiB"
        )
    if results.get("input"):
        i = results["input"]
        share = i.get("share_of_training_rate")
        feeds = f" ({share:.0%} of the fastest training rate)" if share else ""
        print(f"input pipeline: {i['images_per_second']:.1f} images/s on {i['cpus']} CPUs{feeds}")
    for line in results["skipped"] + results["errors"]:
        print(f"not measured: {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    budget = Budget(args.budget)
    setup = configure(args)

    import tensorflow as tf

    from pipeline.files import write_json

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(g).get("device_name", "") for g in gpus]
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dry_run": setup["dry_run"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpus": details,
            "tensorflow": tf.__version__,
        },
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in setup.items()},
        "training": [],
        "input": None,
        "mirrored": None,
        "skipped": [],
        "errors": [],
    }

    def save() -> None:
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        write_json(setup["out"], results)

    print(
        f"{'Dry run' if setup['dry_run'] else 'GPU run'}: {setup['backbone']} at "
        f"{setup['size']} px, "
        f"batch {setup['batch']}, {setup['steps']} timed steps, budget {args.budget:.0f} s"
    )
    run(setup, budget, results, save)
    save()
    print_table(results)
    print(f"Wrote {setup['out']} in {results['elapsed_s']:.0f} s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
