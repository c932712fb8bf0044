"""The data stage's per-image check, locally and on Beam's DirectRunner, on the same photos:
where one machine stops being enough.

    .venv-beam/bin/python benchmarks/beam.py [--photos /tmp/photos-20k] [--count 3000]
        [--workers 1,2] [--repeats 1] [--run models/<run> --predict-count 600]

The same ``count`` photos (every class, evenly thinned, linked into a temporary folder)
are checked three ways, each timed from the file listing to the written report: `make
data`'s ``check_images`` (a process pool over every core, what `make data` spends per
image), and ``python -m pipeline.beam check`` (``pipeline.beam.check.run_check``) on the
DirectRunner in multi-process mode with each of ``--workers`` worker processes. A short
run on 50 photos gives Beam's fixed cost (starting the workers, staging, merging), so the
per-worker rate excludes it. The DirectRunner runs on this machine only: it shows the
per-worker rate a cluster runner (Dataflow, Flink, Spark) would multiply, and the fixed
cost it adds, not a speed-up. With ``--run``, the predict stage the same way on
``--predict-count`` photos: `make predict` (``pipeline.predict.stage.predict``) against
``python -m pipeline.beam predict``, whose fixed cost includes every worker's TensorFlow
start and model load. Prints a table and writes benchmarks/results/beam.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.beam.check import run_check  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.images import check_images, iter_files  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "beam.json"


def subset(photos: Path, count: int, dest: Path) -> Path:
    """``count`` photos of every class, evenly thinned, as symbolic links under dest."""
    files = [f for c in sorted(p for p in photos.iterdir() if p.is_dir()) for f in iter_files(c)]
    step = max(1, len(files) // count)
    for f in files[::step][:count]:
        link = dest / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    return dest


def local_check(folder: Path) -> float:
    """Seconds for make data's check of every file (process pool over every core)."""
    start = time.perf_counter()
    files = [f for c in sorted(folder.iterdir()) for f in iter_files(c)]
    check_images(files, progress=False)
    return time.perf_counter() - start


def direct_runner(workers: int) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--direct_num_workers={workers}",
        "--direct_running_mode=multi_processing",
        "--default_sdk_harness_log_level=ERROR",
    ]


def beam_check(folder: Path, work: Path, workers: int) -> float:
    """Seconds for ``python -m pipeline.beam check`` on the DirectRunner, in process."""
    cfg = load_config(None, [f"data.dataset=folder:{folder}", f"paths.data={work}"])
    start = time.perf_counter()
    run_check(cfg, work / f"check-{workers}.csv", None, direct_runner(workers))
    return time.perf_counter() - start


def predict_seconds(folder: Path, run: Path, work: Path, workers: int) -> float:
    """Seconds for make predict (workers 0) or its Beam pipeline (workers > 0)."""
    from pipeline.beam.predict import run_predict
    from pipeline.predict.stage import predict

    out = work / f"predictions-{workers}-{folder.name}.csv"
    cfg = load_config(None, [f"predict.input={folder}", f"eval.run={run}", f"predict.output={out}"])
    start = time.perf_counter()
    if workers:
        run_predict(cfg, None, None, direct_runner(workers))
    else:
        predict(cfg)
    return time.perf_counter() - start


def rows_for(stage: str, count: int, local: float, fixed: dict, runs: dict) -> list[dict]:
    rows = [
        {
            "stage": stage,
            "how": f"local (make {'data' if stage == 'check' else 'predict'})",
            "workers": os.cpu_count(),
            "seconds": local,
            "images_per_second": count / local,
        }
    ]
    for w, seconds in runs.items():
        rows.append(
            {
                "stage": stage,
                "how": "Beam DirectRunner multi_processing",
                "workers": w,
                "seconds": seconds,
                "images_per_second": count / seconds,
                "fixed_seconds_50_photos": fixed[w],
                "per_worker_images_per_second_without_fixed": count
                / max(seconds - fixed[w], 1e-9)
                / w,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=Path("/tmp/photos-20k"))
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--run", type=Path, default=None, help="a trained run: predict too")
    parser.add_argument("--predict-count", type=int, default=600)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as tmp:
        tmp_path = Path(tmp)
        folder = subset(args.photos, args.count, tmp_path / "photos")
        small = subset(args.photos, 50, tmp_path / "small")
        count = sum(1 for _ in folder.rglob("*.jpg"))
        print(f"{count} photos from {args.photos}; {os.cpu_count()} CPUs")
        local = min(local_check(folder) for _ in range(args.repeats))
        fixed = {w: beam_check(small, tmp_path / "work-small", w) for w in workers}
        runs = {
            w: min(beam_check(folder, tmp_path / "work", w) for _ in range(args.repeats))
            for w in workers
        }
        rows = rows_for("check", count, local, fixed, runs)
        if args.run:
            few = subset(args.photos, args.predict_count, tmp_path / "predict")
            n = sum(1 for _ in few.rglob("*.jpg"))
            work = tmp_path / "work-predict"
            local = predict_seconds(few, args.run, work, 0)
            fixed = {w: predict_seconds(small, args.run, work, w) for w in workers}
            runs = {w: predict_seconds(few, args.run, work, w) for w in workers}
            rows += rows_for("predict", n, local, fixed, runs)
    header = f"{'stage':<9}{'how':<36}{'workers':>8}{'seconds':>9}{'images/s':>10}"
    print(f"\n{header}{'per worker*':>13}{'fixed':>8}")
    for r in rows:
        extra = r.get("per_worker_images_per_second_without_fixed")
        print(
            f"{r['stage']:<9}{r['how']:<36}{r['workers']:>8}{r['seconds']:>9.1f}"
            f"{r['images_per_second']:>10.1f}"
            + (f"{extra:>13.1f}{r['fixed_seconds_50_photos']:>7.1f}s" if extra else "")
        )
    print("* images/s per worker once the fixed cost (the same run on 50 photos) is taken off")
    write_json(
        RESULTS,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            # Other work on the machine (1-minute load average) slows every row alike.
            "load_average_before": load,
            "load_average_after": os.getloadavg()[0],
            "photos": str(args.photos),
            "count": count,
            "run": str(args.run) if args.run else None,
            "rows": rows,
        },
    )
    print(f"Wrote {RESULTS}")


if __name__ == "__main__":
    main()
