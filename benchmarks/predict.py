"""`make predict` at scale: throughput against the model's own rate, memory, resume cost.

    python benchmarks/predict.py [--folder /tmp/photos-20k] [--train-folder
        ../shared/datasets/flowers-mini] [--size 224] [--naive 300] [--small 5000]

Trains a short MobileNet 0.25 run with the real train stage (one epoch per phase, on the
small --train-folder: speed does not depend on accuracy), then measures, in one run:
  forward   the model alone on ready batches (preprocessed tensors in memory), before
            and after the predict runs (the machine may be shared: both are reported)
  predict   `python -m pipeline predict`'s stage in a child process on the whole folder:
            images/s after start-up (model load and first batch excluded), peak memory
  small     the same on the first --small photos (memory must not grow with the folder)
  resume    on the small folder, a child killed (SIGKILL) halfway, then the rerun: its
            time against the remaining share of the uninterrupted run's
  pairs     predict's stream and the forward pass alternated on slices of the folder,
            back to back (the headline ratio, robust to a load that changes meanwhile)
  decode    the predict stream without the model (header check + tf.data decode)
  naive     for each file: PIL load, centre crop, resize, preprocess, model(1 image)
  batches   the forward rate at several batch sizes (the default's reason)
Prints a table and writes benchmarks/results/predict.json (its table:
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.files import write_json  # noqa: E402
from pipeline.images import iter_files  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "predict.json"
SHARED = REPO.parent / "shared"


def predict_cfg(run_dir: Path, folder: Path, output: Path, batch: int = 0):
    from pipeline.config import load_config

    return load_config(
        None,
        [
            f"eval.run={run_dir}",
            f"paths.models={run_dir.parent}",
            f"predict.input={folder}",
            f"predict.output={output}",
            f"predict.batch_size={batch}",
        ],
    )


def child(run_dir: Path, folder: Path, output: Path) -> None:
    """Run the predict stage here and print one JSON line: what it did, how fast, peak RSS."""
    from pipeline.predict.stage import predict

    start = time.perf_counter()
    result = predict(predict_cfg(run_dir, folder, output))
    seconds = time.perf_counter() - start
    peak = peak_rss()
    line = {
        "classified": result.classified,
        "skipped": result.skipped,
        "read": result.read,
        "reused": result.reused,
        "images_per_s": result.images_per_s,
        "seconds": seconds,
        "peak_rss_bytes": peak,
    }
    print("RESULT " + json.dumps(line), flush=True)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which starts afresh at exec
    (ru_maxrss does not: it keeps the forking parent's peak)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(run_dir: Path, folder: Path, output: Path, kill_after_rows: int = 0) -> dict:
    """The predict stage in a fresh process; killed with SIGKILL once the partial file holds
    ``kill_after_rows`` rows, when given."""
    args = [sys.executable, __file__, "--child", str(run_dir), str(folder), str(output)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if kill_after_rows:
        partial = output.with_name(f".{output.name}.partial")
        while proc.poll() is None:
            if partial.is_file() and _lines(partial) > kill_after_rows:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        return {"rows_before_kill": _lines(partial) - 1}
    out, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"predict failed ({proc.returncode}):\n{out[-3000:]}")
    return json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])


def _lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def ready_batch(clf, paths: list[Path], batch: int) -> np.ndarray:
    """``batch`` preprocessed evaluation crops, decoded once, kept in memory."""
    from pipeline.images import check_images
    from pipeline.predict.classifier import rows_from_checks

    rows = rows_from_checks(check_images(paths[:batch], progress=False))
    ds = clf.eval_dataset(rows, batch)
    return np.concatenate([b.numpy() for b in ds])


def forward_rate(clf, x: np.ndarray, seconds: float) -> float:
    """Images/s of the model alone on one ready batch, called repeatedly."""
    clf.predict_batch(x)  # warm-up: graph tracing, memory
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clf.predict_batch(x)
        count += len(x)
    return count / (time.perf_counter() - start)


def paired(clf, paths: list[Path], x: np.ndarray, pairs: int, count: int, work: Path):
    """(predict stream images/s after its first batch, forward images/s) in alternation.

    The machine may be shared: the two rates are measured back to back, pair by pair, so
    that their ratio holds even when the load changes during the run. The stream is
    predict's own (classify_stream, rows fsync'd to a partial file), in this process.
    """
    from pipeline.predict.classifier import prediction_header
    from pipeline.predict.partial import PartialRows
    from pipeline.predict.stream import classify_stream

    k = min(3, len(clf.labels))
    header = prediction_header(k)
    step = max(1, len(paths) // pairs)
    out = []
    for i in range(pairs):
        chunk = paths[i * step : i * step + count]
        saved = PartialRows(work / "pairs.csv", f"pair{i}", header)
        counts = classify_stream(
            clf, chunk, bytearray(b"\x01") * len(chunk), header, saved.append, k
        )
        saved.close()
        saved.partial.unlink()
        forward = forward_rate(clf, x, count / max(counts.steady_rate, 1.0) / 3)
        out.append((counts.steady_rate, forward))
        print(
            f"pair {i + 1}: predict {counts.steady_rate:.1f}, forward {forward:.1f} img/s",
            flush=True,
        )
    return out


def decode_rate(clf, paths: list[Path], batch: int) -> float:
    """Images/s of the predict stream without the model (header pass included)."""
    from pipeline.predict.stream import check_headers, decode_dataset

    todo = bytearray(b"\x01") * len(paths)
    cfg = clf.cfg
    headers = check_headers(paths, todo, {}, cfg.data.min_side, cfg.data.max_pixels)
    fraction = cfg.input.eval_crop_fraction
    ds = decode_dataset(headers, clf.spec.size, fraction, clf.spec.backbone, batch)
    it = iter(ds)
    first = next(it)[0].shape[0]
    count, start = 0, time.perf_counter()
    for index, *_ in it:
        count += int(index.shape[0])
    if not count:
        return float(first)
    header_share = headers.seconds * count / (count + first)  # as classify_stream counts it
    return count / (time.perf_counter() - start + header_share)


def naive_loop(clf, paths: list[Path]) -> float:
    """What a first notebook does: one file, one model call, no pipeline. Images/s."""
    from PIL import Image

    from pipeline.backbones import get_backbone, preprocess
    from pipeline.images import load_rgb

    size, fraction = clf.cfg.image_size, clf.cfg.input.eval_crop_fraction
    backbone = get_backbone(clf.cfg.model.backbone)
    start = time.perf_counter()
    for path in paths:
        image = load_rgb(path)
        h, w = image.shape[:2]
        side = int(min(h, w) * fraction)
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size))
        x = preprocess(np.asarray(crop, np.float32)[None], backbone)
        clf.model.predict(x, verbose=0)
    return len(paths) / (time.perf_counter() - start)


def train_run(work: Path, folder: Path, size: int) -> Path:
    from pipeline.config import load_config
    from pipeline.training import train

    weights = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{folder}",
            f"paths.data={work / 'data'}",
            f"paths.reports={work / 'reports'}",
            f"paths.models={work / 'models'}",
            "model.backbone=mobilenet",
            "model.alpha=0.25",
            f"model.weights={weights if weights.is_file() else 'none'}",
            f"input.image_size={size}",
            "train.head_epochs=1",
            "train.fine_tune_epochs=1",
            "train.run_name=bench",
        ],
    )
    return Path(train(cfg).run_dir)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(*(Path(a) for a in sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/photos-20k"))
    parser.add_argument("--train-folder", type=Path, default=SHARED / "datasets/flowers-mini")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--naive", type=int, default=300, help="photos for the naive loop")
    parser.add_argument("--small", type=int, default=5000, help="photos for the memory check")
    parser.add_argument("--forward-s", type=float, default=15.0)
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--pairs", type=int, default=6, help="alternated predict/forward pairs")
    parser.add_argument("--pair-photos", type=int, default=960)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    for folder in (args.folder, args.train_folder):
        if not folder.is_dir():
            sys.exit(f"{folder}: no such folder (benchmarks/photo_folder.py makes --folder)")

    from pipeline.predict.classifier import load_classifier

    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    run_dir = train_run(work, args.train_folder, args.size)
    paths = sorted(iter_files(args.folder), key=str)
    clf = load_classifier(run_dir)
    batch = clf.cfg.input.batch_size
    x = ready_batch(clf, paths, batch)
    load = os.getloadavg()[0]

    print("\n== forward (before)", flush=True)
    forward = [forward_rate(clf, x, args.forward_s)]
    print(f"{forward[0]:.1f} img/s", flush=True)
    print("== predict and forward in alternation", flush=True)
    pairs = paired(clf, paths, x, args.pairs, args.pair_photos, work)
    pair_ratios = [p / f for p, f in pairs]
    print("== decode without the model; naive loop; batch sizes", flush=True)
    decode = decode_rate(clf, paths[:4000], batch)
    naive = naive_loop(clf, paths[: args.naive])
    sweep = {}
    for size in (int(b) for b in args.batches.split(",")):
        sweep[size] = forward_rate(clf, np.resize(x, (size, *x.shape[1:])), args.forward_s / 3)

    print(f"== predict on {len(paths)} photos", flush=True)
    full = run_child(run_dir, args.folder, work / "full.csv")
    print(json.dumps(full), "\n== forward (after)", flush=True)
    forward.append(forward_rate(clf, x, args.forward_s))
    print(f"{forward[1]:.1f} img/s\n== predict on the first {args.small} photos", flush=True)
    small_dir = work / "small"
    for i, path in enumerate(paths[: args.small]):
        (small_dir / path.parent.name).mkdir(parents=True, exist_ok=True)
        (small_dir / path.parent.name / f"{i:06d}-{path.name}").symlink_to(path.resolve())
    small = run_child(run_dir, small_dir, work / "small.csv")
    print(json.dumps(small), f"\n== resume on the {args.small}: kill -9 halfway, rerun", flush=True)
    killed = run_child(run_dir, small_dir, work / "resume.csv", args.small // 2)
    rerun = run_child(run_dir, small_dir, work / "resume.csv")
    identical = (work / "resume.csv").read_bytes() == (work / "small.csv").read_bytes()
    share = rerun["read"] / args.small
    print(json.dumps({**killed, **rerun, "identical": identical}), flush=True)
    model_rate = float(np.mean(forward))
    figures = {
        "command": " ".join(["benchmarks/predict.py", *sys.argv[1:]]),
        "photos": len(paths),
        "backbone": "mobilenet alpha 0.25",
        "size": args.size,
        "batch_size": batch,
        "cores": os.cpu_count(),
        "load_average_at_start": load,
        "forward_images_per_s": {"before": forward[0], "after": forward[1], "mean": model_rate},
        "predict_images_per_s": full["images_per_s"],
        "predict_over_forward": full["images_per_s"] / model_rate,
        "predict_seconds": full["seconds"],
        "decode_only_images_per_s": decode,
        "naive_images_per_s": naive,
        "naive_photos": args.naive,
        "predict_over_naive": full["images_per_s"] / naive,
        "peak_rss_bytes": {len(paths): full["peak_rss_bytes"], args.small: small["peak_rss_bytes"]},
        "resume": {
            "rows_before_kill": killed["rows_before_kill"],
            "rerun_read": rerun["read"],
            "rerun_reused": rerun["reused"],
            "rerun_seconds": rerun["seconds"],
            "photos": args.small,
            "remaining_share_of_uninterrupted_seconds": small["seconds"] * share,
            "rerun_over_remaining": rerun["seconds"] / (small["seconds"] * share),
            "csv_identical_to_uninterrupted": identical,
        },
        "forward_by_batch_size": sweep,
        "pairs": {
            "photos_each": args.pair_photos,
            "predict_forward_images_per_s": pairs,
            "ratios": pair_ratios,
            "median_ratio": float(np.median(pair_ratios)),
        },
    }
    mib = 1 << 20
    print(
        f"\n{len(paths)} photos, MobileNet 0.25 at {args.size}px, batch {batch}, "
        f"{os.cpu_count()} cores (load average {load:.1f} at start)"
    )
    table = [
        (
            "model forward, ready batches",
            f"{model_rate:.0f} img/s",
            f"{forward[0]:.0f} before, {forward[1]:.0f} after",
        ),
        (
            "make predict, after start-up",
            f"{full['images_per_s']:.0f} img/s",
            f"{figures['predict_over_forward']:.2f} of forward (target 0.80)",
        ),
        ("predict stream without model", f"{decode:.0f} img/s", "header check + decode"),
        (
            "predict / forward, alternated",
            f"{np.median(pair_ratios):.2f}",
            f"median of {len(pairs)} pairs: " + ", ".join(f"{r:.2f}" for r in pair_ratios),
        ),
        (
            f"naive loop ({args.naive} photos)",
            f"{naive:.1f} img/s",
            f"predict {figures['predict_over_naive']:.1f}x (target 5x)",
        ),
        (f"peak RSS, {len(paths)} photos", f"{full['peak_rss_bytes'] / mib:.0f} MiB", ""),
        (f"peak RSS, {args.small} photos", f"{small['peak_rss_bytes'] / mib:.0f} MiB", ""),
        (
            f"resume after kill -9 at half of {args.small}",
            f"{rerun['seconds']:.1f} s",
            f"{figures['resume']['rerun_over_remaining']:.2f}x the remaining share; "
            f"CSV identical: {identical}",
        ),
    ]
    for name, value, note in table:
        print(f"{name:32s} {value:>12s}  {note}")
    print("forward by batch size: " + ", ".join(f"{b}: {r:.0f}" for b, r in sweep.items()))
    write_json(args.output, figures)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
