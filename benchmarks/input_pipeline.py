"""Input pipeline throughput, side by side in one run, on real photos at 299x299.

    python benchmarks/input_pipeline.py [--folder ../shared/datasets/flowers-mini]
        [--size 299] [--images 1200] [--rounds 3] [--gpu-rate 800]

Variants (images/s, median of interleaved rounds, all cores and one core):
  default     the training pipeline with its default augmentation (random resized crop
              decoding only the crop, flip), exactly as `make train` builds it
  ceiling     read + decode + resize, nothing else
  keras       keras.utils.image_dataset_from_directory + the Keras guide's augmentation
              (RandomFlip, RandomRotation(0.1), RandomZoom(0.1)), the obvious baseline
  eval        the evaluation pipeline (centre crop decoded, resize)
  unordered   the default pipeline with input.deterministic=false (any element order)
  cached      the default pipeline reading the decoded cache (shorter side 342)
Prints a table with ratios and writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.backbones import get_backbone  # noqa: E402
from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.data.image_cache import build_image_cache, cached_rows  # noqa: E402
from pipeline.data.manifest import load_split  # noqa: E402
from pipeline.data.stage import prepare_data  # noqa: E402
from pipeline.inputs import build_eval_dataset, build_train_dataset  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "input_pipeline.json"


def ceiling_dataset(rows, size: int, batch: int) -> tf.data.Dataset:
    """Read, decode, resize: the least any pipeline must do."""

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, [size, size])

    ds = tf.data.Dataset.from_tensor_slices([r.path for r in rows])
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)


def keras_dataset(folder: Path, size: int, batch: int, seed: int) -> tf.data.Dataset:
    ds = keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=batch, seed=seed, verbose=False
    )
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, seed=seed),
            keras.layers.RandomZoom(0.1, seed=seed),
        ]
    )
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def with_threads(ds: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
    if not threads:
        return ds
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def images_per_second(ds: tf.data.Dataset, images: int) -> float:
    iterator = iter(ds.repeat())
    next(iterator)  # warm-up: thread pools, autotuning, file cache
    next(iterator)
    seen, start = 0, time.perf_counter()
    while seen < images:
        batch = next(iterator)
        seen += int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch.shape[0])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=REPO.parent / "shared/datasets/flowers-mini")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=1200, help="images timed per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gpu-rate",
        type=float,
        default=800.0,
        help="images/s a GPU consumes fine-tuning InceptionV3 (to size the CPU)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"{args.folder}: no such folder of class subfolders (give --folder)")

    work = Path(tempfile.mkdtemp(prefix="bench-input-"))
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{args.folder}",
            f"paths.data={work / 'data'}",
            f"paths.reports={work / 'reports'}",
            f"input.image_size={args.size}",
            f"input.batch_size={args.batch}",
        ],
    )
    result = prepare_data(cfg, progress=False)
    rows = [r for s in ("train", "val", "test") for r in load_split(result.dataset_dir, s)]
    n = len(result.classes)
    build_image_cache(rows, result.dataset_dir, 342)
    unordered = with_overrides(cfg, {"input.deterministic": False})
    backbone, size, seed = get_backbone(cfg.model.backbone), cfg.image_size, cfg.train.seed

    def train(rows, options=cfg.input):
        return build_train_dataset(rows, options, size, n, seed, backbone=backbone)

    builders = {
        "default": lambda: train(rows),
        "ceiling": lambda: ceiling_dataset(rows, args.size, args.batch),
        "keras": lambda: keras_dataset(args.folder, args.size, args.batch, seed),
        "eval": lambda: build_eval_dataset(rows, cfg.input, size, backbone=backbone, num_classes=n),
        "unordered": lambda: train(rows, unordered.input),
        "cached": lambda: train(cached_rows(rows, result.dataset_dir, 342)),
    }
    cores = os.cpu_count() or 1
    measured: dict[str, dict[str, list[float]]] = {k: {"all": [], "one": []} for k in builders}
    for round_ in range(args.rounds):
        for name, build in builders.items():  # interleaved, so drift hits every variant alike
            measured[name]["all"].append(images_per_second(build(), args.images))
            measured[name]["one"].append(
                images_per_second(with_threads(build(), 1), args.images // 3)
            )
            print(
                f"round {round_ + 1}/{args.rounds} {name:10s} "
                f"{measured[name]['all'][-1]:7.1f} img/s",
                flush=True,
            )

    median = {k: {t: statistics.median(v) for t, v in m.items()} for k, m in measured.items()}
    table = []
    for name in builders:
        rate, one = median[name]["all"], median[name]["one"]
        table.append(
            {
                "variant": name,
                "images_per_s": round(rate, 1),
                "images_per_s_one_core": round(one, 1),
                "vs_ceiling": round(rate / median["ceiling"]["all"], 3),
                "vs_keras": round(rate / median["keras"]["all"], 2),
                "cores_to_feed_gpu": round(args.gpu_rate / one, 1),
            }
        )
    print(
        f"\n{len(rows)} real photos from {args.folder}, {args.size}x{args.size}, batch "
        f"{args.batch}, {cores} cores, median of {args.rounds} rounds"
    )
    header = (
        f"{'variant':10s} {'img/s':>8s} {'img/s/core':>11s} {'vs ceiling':>11s} "
        f"{'vs keras':>9s} {'cores for ' + str(int(args.gpu_rate)) + '/s':>14s}"
    )
    print(header)
    for r in table:
        print(
            f"{r['variant']:10s} {r['images_per_s']:8.1f} {r['images_per_s_one_core']:11.1f} "
            f"{r['vs_ceiling']:11.2f} {r['vs_keras']:9.2f} {r['cores_to_feed_gpu']:14.1f}"
        )
    goals = {
        "default_vs_ceiling>=0.6": table[0]["vs_ceiling"] >= 0.6,
        "default_vs_keras>=3": table[0]["vs_keras"] >= 3.0,
    }
    print("goals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "images": len(rows),
        "size": args.size,
        "batch": args.batch,
        "cores": cores,
        "rounds": args.rounds,
        "gpu_rate": args.gpu_rate,
        "tensorflow": tf.__version__,
        "table": table,
        "raw": measured,
        "goals": goals,
    }
    from pipeline.files import write_json

    write_json(args.output, payload)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
