"""Memory per image, measured against the estimate: the real training step, fresh processes.

    python benchmarks/memory.py [--cases inception_v3:128:2,inception_v3:128:all,small_cnn:64:1]
        [--batches 8,32] [--repeats 3] [--steps 4] [--kernels auto|eigen|onednn]
        [--sweep | --replay] [--out PATH]
    python benchmarks/memory.py --rescore benchmarks/results/memory.json [--out PATH]

A case is backbone:image size:phase[:precision]; the phase is 1 (base frozen), 2 (layers
after the backbone's cut point train) or all (every layer but BatchNorm trains), the
precision float32 (default) or mixed_float16. ``--sweep`` measures every backbone of the
table (``pipeline.backbones.BACKBONES``) in each of its phases, at both precisions and two
image sizes; it takes hours on a 2-core CPU, so it is not the default.

Each measurement is a fresh process that trains the way ``make train`` does: the
classifier from ``build_classifier`` and ``freeze_for_phase`` (no pretrained weights),
Adam from ``compile_for_training``, the training step of ``pipeline.training.loop`` over
``training_forward``, fed by ``build_train_dataset`` (random crops, flips, prefetch) from
generated JPEGs. It reports the allocator's peak: TensorFlow's BFC allocator is switched on
for the CPU (TF_CPU_ALLOCATOR_USE_BFC) so ``tf.config.experimental.get_memory_info`` counts
every tensor, as it does on a GPU. Peak resident memory (VmHWM) is reported beside it; it
is larger and less repeatable (glibc keeps freed blocks in per-thread arenas).

The peak is the highest over ``--steps`` training steps: it depends on the order the
inter-op threads run the backward pass in, and a single step sometimes lands in a schedule
about 20% lower than the worst one, the one an out-of-memory error meets.

The measured steps run under TensorFlow's profiler, whose trace records every allocation
with the bytes requested and the chunk the allocator gave (``chunks_at_peak``). The
allocator hands out a free chunk whole when it is under twice the request, so the peak can
hold chunk bytes no tensor asked for: the table gives that rounding at the peak, and the
per-image slope and error of the peak without it, beside the peak itself.

``--replay`` checks a model of the allocator (``BFCModel``): one process per case and batch
is traced from its first allocation, and its requests, in the trace's order, are fed to the
model, whose peak and bytes in use are compared with the real allocator's. ``--rescore``
scores the peaks recorded in a results file against the current estimate.

TensorFlow runs one of two sets of CPU kernels, which allocate differently: its own (Eigen)
or oneDNN's, chosen at start by TF_ENABLE_ONEDNN_OPTS or, unset, by the CPU (oneDNN where it
has AVX512-VNNI, AVX-VNNI, BF16 or AMX). ``--kernels`` sets that variable for the measured
processes (auto leaves it as it is); each measurement records which set ran, and the
estimate models that set (``pipeline.memory.estimate.kernel_rows``). Results files written
before the set was recorded hold Eigen's: their peaks are reproduced on a oneDNN machine
with TF_ENABLE_ONEDNN_OPTS=0.

Every batch size is measured ``--repeats`` times; the line through the median peaks gives
the measured memory per image (its slope), compared with the estimate's slope over the same
batches (``pipeline.memory.realistic_training``); each batch's estimated total is compared
with its median peak. Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.files import write_json  # noqa: E402
from pipeline.memory.allocator import BFCModel  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "memory.json"  # Eigen's kernels; oneDNN's: _onednn
REPLAYS = RESULTS.with_name("memory_replay.json")
DEFAULT_CASES = "inception_v3:128:2,inception_v3:128:all,small_cnn:64:1"
NUM_CLASSES = 5
IMAGES = 16  # distinct generated JPEGs; the training set repeats them
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


def parse_case(case: str) -> tuple[str, int, str, str]:
    """'inception_v3:128:2[:mixed_float16]' -> (backbone, size, phase, precision)."""
    backbone, size, phase, *rest = case.split(":")
    if phase not in ("1", "2", "all"):
        raise ValueError(f"phase must be 1, 2 or all. Received: {case!r}")
    return backbone, int(size), phase, rest[0] if rest else "float32"


def _jpegs(folder: Path, size: int) -> list[SimpleNamespace]:
    """Manifest-like rows of generated JPEGs a little larger than the crop."""
    import numpy as np
    from PIL import Image

    rows = []
    for i in range(IMAGES):
        path = folder / f"{size}-{i}.jpg"
        if not path.exists():
            pixels = np.random.default_rng(i).integers(0, 255, (size * 5 // 4,) * 2 + (3,))
            Image.fromarray(pixels.astype(np.uint8)).save(path)
        rows.append(
            SimpleNamespace(path=str(path), decoder="jpeg", orientation=1, label_index=i % 5)
        )
    return rows


def case_model(case: str) -> tuple:
    """The classifier ``make train`` builds for a case, frozen for its phase (no pretrained
    weights), with its config, spec and precision; the global policy is set to it."""
    import keras

    from pipeline.config import Config, with_overrides
    from pipeline.model import build_classifier, classifier_spec, freeze_for_phase, get_base

    backbone, size, phase, precision = parse_case(case)
    keras.mixed_precision.set_global_policy(precision)
    cfg = with_overrides(
        Config(), {"model.backbone": backbone, "input.image_size": size, "model.weights": "none"}
    )
    spec = classifier_spec(cfg)
    model = build_classifier(spec, NUM_CLASSES)
    if phase == "all":  # cut after the base's input layer: every layer trains (BatchNorm not)
        cfg = with_overrides(cfg, {"model.fine_tune_after": get_base(model).layers[0].name})
        spec = classifier_spec(cfg)
    freeze_for_phase(model, spec, 1 if phase == "1" else 2)
    return model, cfg, spec, precision


def estimate_fields(estimate: dict) -> dict:
    """What a measurement records of the estimate for its case and batch: the total, and its
    two figures (the tensors' worst moment, the allocator's replayed chunks)."""
    return {
        "estimate_per_image": estimate["per_image"],
        "estimate_fixed": estimate["fixed"],
        "estimate_tensors": estimate["tensors_total"],
        "estimate_allocator": estimate["allocator"],
        "estimate_total": estimate["total"],
    }


def rescore(path: Path, out: Path) -> None:
    """The peaks recorded in ``path`` against the current estimate, without measuring again:
    the estimate needs the model's rows, not a training step, so a change to it is scored in
    a minute against peaks that took half an hour to measure."""
    from pipeline.memory import realistic_training
    from pipeline.memory.keras_graph import layers_from_model

    data = json.loads(path.read_text())
    results = []
    for case in data["cases"]:
        model, _, _, precision = case_model(case["case"])
        rows = layers_from_model(model)
        points = [
            {
                **p,
                **estimate_fields(
                    realistic_training(
                        rows, p["batch"], precision, kernels=p.get("kernels", "eigen")
                    )
                ),
            }
            for p in case["points"]
        ]
        results.append(summarise(case["case"], points))
    print_table(results)
    write_json(
        out,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "memory": f"the peaks measured by `{data['command']}` ({path.name}), against "
            "the estimate of this code",
            "machine": data.get("machine"),
            "kernels": data.get("kernels", "eigen"),
            "cases": results,
        },
    )
    print(f"Wrote {out}")


def run_child(case: str, batch: int, steps: int, images: Path, trace: str, replay: bool) -> dict:
    """One measurement, in this (fresh) process: the real training step on real batches,
    its measured steps traced by the profiler (with ``replay``, the whole process, replayed
    through ``BFCModel`` instead)."""
    import tensorflow as tf

    from pipeline.inputs import build_train_dataset
    from pipeline.memory import realistic_training
    from pipeline.memory.classifier import configured_kernels
    from pipeline.memory.keras_graph import layers_from_model
    from pipeline.model import training_forward
    from pipeline.training.loop import build_train_step, compile_for_training

    if replay:
        tf.profiler.experimental.start(trace)
    model, cfg, spec, precision = case_model(case)
    kernels = configured_kernels(cfg)  # memory.kernels is auto: the set this process runs
    estimate = realistic_training(layers_from_model(model), batch, precision, kernels=kernels)
    strategy = tf.distribute.get_strategy()
    compile_for_training(model, strategy, 1e-4, cfg.train)
    model_bytes = int(tf.config.experimental.get_memory_info("CPU:0")["current"])
    rows = _jpegs(images, cfg.input.image_size) * max(1, -(-batch // IMAGES))
    dataset = build_train_dataset(
        rows,
        cfg.input,
        spec.size,
        NUM_CLASSES,
        cfg.train.seed,
        backbone=spec.backbone,
        batch_size=batch,
    ).repeat()
    step = build_train_step(
        model, training_forward(model, spec.backbone), strategy, batch, None, 0.0, jit_compile=False
    )
    batches = iter(dataset)
    step(next(batches))  # traces the step
    held_bytes = int(tf.config.experimental.get_memory_info("CPU:0")["current"])
    tf.config.experimental.reset_memory_stats("CPU:0")
    if not replay:
        tf.profiler.experimental.start(trace)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    seconds = (time.perf_counter() - start) / steps
    tf.profiler.experimental.stop()
    events = allocator_events(trace)
    if replay:
        return {"case": case, "batch": batch, **replayed(events)}
    return {
        "batch": batch,
        "kernels": kernels,
        "peak_bytes": int(tf.config.experimental.get_memory_info("CPU:0")["peak"]),
        "peak_rss": _peak_rss(),
        "model_bytes": model_bytes,  # weights and optimizer state as allocated
        "held_bytes": held_bytes,  # before the measured steps: model, buffered batches
        **estimate_fields(estimate),
        "seconds_per_step": seconds,  # with the profiler's allocator trace on
        **chunks_at_peak(events),
    }


def _stats(plane, event) -> dict:
    """An XPlane event's statistics by name."""
    out = {}
    for s in event.stats:
        kind = s.WhichOneof("value")
        value = getattr(s, kind) if kind else None
        out[plane.stat_metadata[s.metadata_id].name] = (
            plane.stat_metadata[value].name if kind == "ref_value" else value
        )
    return out


def allocator_events(trace: str) -> list[tuple[bool, dict]]:
    """The BFC allocator's allocations (True) and frees (False) in a profiler trace, in order.

    TensorFlow's profiler records each one (``MemoryAllocation``, ``MemoryDeallocation``)
    with the bytes requested, the chunk given, its address and the bytes in use after it.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    events = []
    for path in Path(trace).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace.FromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if name in ("MemoryAllocation", "MemoryDeallocation"):
                        at = line.timestamp_ns * 1000 + event.offset_ps
                        events.append((at, name == "MemoryAllocation", _stats(plane, event)))
    if not events:
        raise RuntimeError(f"no allocator events in the profiler trace under {trace}")
    return [(allocation, stats) for _, allocation, stats in sorted(events, key=lambda e: e[0])]


def chunks_at_peak(events: list[tuple[bool, dict]]) -> dict:
    """What the allocator held at the traced peak beyond the bytes requested.

    The allocator gives a whole free chunk, unsplit, when it is under twice the request, so
    a tensor can hold up to twice its size. Replaying the events up to the one with the
    highest bytes in use gives the chunks alive then: their chunk bytes beyond the request
    (``rounding_bytes``, chunks made before the trace not counted) and the largest such
    chunks.
    """
    peak = max(range(len(events)), key=lambda i: events[i][1]["bytes_allocated"])
    alive: dict[int, dict] = {}
    for allocation, stats in events[: peak + 1]:
        if allocation:
            alive[stats["addr"]] = stats
        else:
            alive.pop(stats["addr"], None)
    rounded = sorted(
        (s for s in alive.values() if s["allocation_bytes"] > s["requested_bytes"]),
        key=lambda s: s["requested_bytes"] - s["allocation_bytes"],
    )
    return {
        "traced_peak_bytes": events[peak][1]["bytes_allocated"],
        "rounding_bytes": sum(s["allocation_bytes"] - s["requested_bytes"] for s in rounded),
        "rounded_chunks": [
            {k: s.get(k) for k in ("tf_op", "requested_bytes", "allocation_bytes")}
            for s in rounded[:3]
        ],
    }


def replayed(events: list[tuple[bool, dict]]) -> dict:
    """The trace's requests, in its order, through ``BFCModel``: its peak against the real
    one, the largest gap in bytes in use and the chunks it sized differently."""
    model, where = BFCModel(), {}
    gap = mismatches = 0
    for allocation, stats in events:
        if allocation:
            where[stats["addr"]] = model.allocate(stats["requested_bytes"])
            mismatches += model.chunks[where[stats["addr"]]][0] != stats["allocation_bytes"]
        elif stats["addr"] in where:
            model.free(where.pop(stats["addr"]))
        gap = max(gap, abs(model.in_use - stats["bytes_allocated"]))
    return {
        "allocations": sum(a for a, _ in events),
        "real_peak_bytes": max(s["bytes_allocated"] for _, s in events),
        "model_peak_bytes": model.peak,
        "largest_gap_bytes": gap,
        "chunks_sized_differently": mismatches,
    }


def child_env(kernels: str = "auto") -> dict[str, str]:
    """A fresh process's environment with the BFC allocator, and its statistics, on the CPU,
    running ``kernels`` (auto: as TensorFlow decides here)."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "PYTHONPATH": str(REPO)}
    if kernels != "auto":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if kernels == "onednn" else "0"
    return env


def measure(
    case: str, batch: int, steps: int, images: Path, replay: bool = False, kernels: str = "auto"
) -> dict:
    """run_child in a fresh process with the BFC allocator's statistics on."""
    env = child_env(kernels)
    command = [sys.executable, __file__, "--child", case, "--batch", str(batch)]
    command += ["--steps", str(steps), "--images", str(images)]
    command += ["--replay"] if replay else []
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{case} batch {batch} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def range_error(estimate: float, peaks: list[float]) -> float:
    """0 when ``estimate`` lies within the measured peaks' range, else its relative error
    against the nearer end."""
    low, high = min(peaks), max(peaks)
    return (estimate - high) / high if estimate > high else min(0.0, (estimate - low) / low)


def summarise(case: str, points: list[dict]) -> dict:
    """Median peak per batch, the line through them, its residuals, the spread of the
    per-image slope over repeats, the estimate's error against the median slope and its
    total's error against each batch's median peak."""
    batches = sorted({p["batch"] for p in points})
    runs = {b: [p for p in points if p["batch"] == b] for b in batches}
    medians = [statistics.median(p["peak_bytes"] for p in runs[b]) for b in batches]
    slope, intercept = fit_line(batches, medians)
    repeats = min(len(r) for r in runs.values())
    slopes = [
        fit_line(batches, [runs[b][k]["peak_bytes"] for b in batches])[0] for k in range(repeats)
    ]
    rss = [statistics.median(p["peak_rss"] for p in runs[b]) for b in batches]
    # The peak less the chunk bytes beyond what its tensors requested: what the tensors
    # themselves asked for (the estimate rounds scratch up, so it is no exact target).
    requested = [
        statistics.median(p["peak_bytes"] - p["rounding_bytes"] for p in runs[b]) for b in batches
    ]
    requested_slope = fit_line(batches, requested)[0]
    # The estimate's own slope: its worst moment, hence its per-image figure, can change
    # with the batch size.
    totals = [runs[b][0]["estimate_total"] for b in batches]
    estimate = fit_line(batches, totals)[0]
    figures = {
        k: [runs[b][0].get(k) for b in batches] for k in ("estimate_tensors", "estimate_allocator")
    }
    return {
        "case": case,
        "kernels": points[0].get("kernels", "eigen"),
        "batches": batches,
        "points": points,
        "median_peak_bytes": medians,
        "residual_bytes": [m - (intercept + slope * b) for b, m in zip(batches, medians)],
        "measured_per_image": slope,
        "per_image_min": min(slopes),
        "per_image_max": max(slopes),
        "spread": (max(slopes) - min(slopes)) / slope,
        "intercept": intercept,
        "estimate_per_image": estimate,
        "estimate_fixed": points[0]["estimate_fixed"],
        "estimate_total_bytes": totals,
        **{f"{k}_bytes": v for k, v in figures.items()},
        "relative_error": (estimate - slope) / slope,
        "total_error": [(e - m) / m for e, m in zip(totals, medians)],
        # Against the processes' range: 0 inside it, else the error to its nearer end. The
        # same step peaks in two modes from one process to the next (the allocator's chunks).
        "range_error": [
            range_error(e, [p["peak_bytes"] for p in runs[b]]) for e, b in zip(totals, batches)
        ],
        "rss_per_image": fit_line(batches, rss)[0],
        "median_rounding_bytes": [
            statistics.median(p["rounding_bytes"] for p in runs[b]) for b in batches
        ],
        "requested_per_image": requested_slope,
        "requested_error": (estimate - requested_slope) / requested_slope,
    }


def sweep_cases(sizes: tuple[int, int] = (96, 128)) -> list[str]:
    """Every backbone of the table in each of its phases, both precisions, two sizes."""
    from pipeline.backbones import BACKBONES

    cases = []
    for name, backbone in BACKBONES.items():
        phases = ("1", "2", "all") if backbone.pretrained else ("1",)
        for size in sizes:
            side = max(size, backbone.min_size)
            for phase in phases:
                for precision in ("float32", "mixed_float16"):
                    cases.append(f"{name}:{side}:{phase}:{precision}")
    return cases


def print_table(results: list[dict]) -> None:
    kernels = ", ".join(sorted({r["kernels"] for r in results}))
    print(f"\nCPU kernels: {kernels}")
    print(
        f"{'case':<36}{'measured/img':>14}{'spread':>8}{'estimate/img':>14}{'error':>8}"
        f"{'peaks (MiB)':>16}{'estimates':>16}{'total error':>14}{'rounding':>12}"
        f"{'requested/img':>15}{'error':>8}{'RSS/img':>10}"
    )
    for r in results:
        peaks = ",".join(f"{x / MiB:.0f}" for x in r["median_peak_bytes"])
        total = ",".join(f"{x:+.0%}" for x in r["total_error"])
        estimates = ",".join(f"{x / MiB:.0f}" for x in r["estimate_total_bytes"])
        rounding = ",".join(f"{x / MiB:.0f}" for x in r["median_rounding_bytes"])
        print(
            f"{r['case']:<36}{r['measured_per_image'] / MiB:>10.2f} MiB{r['spread']:>8.0%}"
            f"{r['estimate_per_image'] / MiB:>10.2f} MiB{r['relative_error']:>+8.1%}"
            f"{peaks:>16}{estimates:>16}{total:>14}{rounding:>12}"
            f"{r['requested_per_image'] / MiB:>11.2f} MiB{r['requested_error']:>+8.1%}"
            f"{r['rss_per_image'] / MiB:>6.2f} MiB"
        )
    errors = [(t, g) for r in results for t, g in zip(r["total_error"], r["range_error"])]
    print(
        f"Batches whose estimated total is within 10% of the median peak: "
        f"{sum(abs(t) <= 0.10 for t, _ in errors)} of {len(errors)}; within 10% of the "
        f"processes' range: {sum(abs(g) <= 0.10 for _, g in errors)} of {len(errors)}"
    )


def replay_cases(cases: list[str], batches: list[int], steps: int, out: Path, kernels: str) -> None:
    """The allocator model against the real allocator: each process's whole trace replayed."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as images:
        rows = [
            measure(c, b, steps, Path(images), replay=True, kernels=kernels)
            for c in cases
            for b in batches
        ]
    print(f"\n{'case':<36}{'batch':>6}{'allocations':>13}{'real peak':>14}{'model peak':>14}"
          f"{'largest gap':>14}{'chunks off':>12}")  # fmt: skip
    for r in rows:
        print(
            f"{r['case']:<36}{r['batch']:>6}{r['allocations']:>13,}"
            f"{r['real_peak_bytes'] / MiB:>10.2f} MiB{r['model_peak_bytes'] / MiB:>10.2f} MiB"
            f"{r['largest_gap_bytes'] / MiB:>10.2f} MiB{r['chunks_sized_differently']:>12,}"
        )
    minutes = (time.perf_counter() - started) / 60
    write_json(
        out,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "memory": "each process's allocator trace, from its start, replayed through "
            "BFCModel: the model's peak and bytes in use against the real allocator's",
            "minutes": minutes,
            "replays": rows,
        },
    )
    print(f"Wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sweep", action="store_true", help="every backbone, phase, precision")
    parser.add_argument(
        "--kernels",
        choices=("auto", "eigen", "onednn"),
        default="auto",
        help="CPU kernels the measured processes run (TF_ENABLE_ONEDNN_OPTS); auto: as here",
    )
    parser.add_argument("--out", default="", help="JSON path (default benchmarks/results/)")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="trace one process per case and batch from its start and replay it through the "
        "allocator model (BFCModel)",
    )
    parser.add_argument(
        "--rescore",
        default="",
        metavar="JSON",
        help="score the peaks recorded in a results file against the current estimate, "
        "without measuring again",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--images", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as trace:
            result = run_child(
                args.child, args.batch, args.steps, Path(args.images), trace, args.replay
            )
        print(json.dumps(result))
        return
    if args.rescore:
        source = Path(args.rescore)
        rescore(source, Path(args.out or source.with_name(f"{source.stem}_rescored.json")))
        return
    batches = [int(b) for b in args.batches.split(",")]
    if args.replay:
        replay_cases(
            args.cases.split(","), batches, args.steps, Path(args.out or REPLAYS), args.kernels
        )
        return
    if len(batches) < 2:
        parser.error("--batches needs at least two sizes to fit a line, e.g. 8,32")
    cases = sweep_cases() if args.sweep else args.cases.split(",")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as images:
        for case in cases:
            print(f"{case}: batches {batches}, {args.repeats} fresh processes each", flush=True)
            points = [
                measure(case, b, args.steps, Path(images), kernels=args.kernels)
                for _ in range(args.repeats)
                for b in batches
            ]
            results.append(summarise(case, points))
            print_table(results[-1:])
    print_table(results)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(cases)} case(s) in {minutes:.1f} min")
    kernels = results[0]["kernels"]
    name = f"memory{'_sweep' if args.sweep else ''}{'_onednn' if kernels == 'onednn' else ''}"
    out = Path(args.out) if args.out else RESULTS.with_name(f"{name}.json")
    write_json(
        out,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "kernels": kernels,
            "memory": "TensorFlow allocator peak (BFC statistics), per image: slope of the "
            "median peaks against batch size",
            "minutes": minutes,
            "cases": results,
        },
    )
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
