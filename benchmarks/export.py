"""What int8 and float16 TFLite cost and save, against float32, on real runs, side by side.

    python benchmarks/export.py [--datasets ../shared/datasets] [--rounds 3]
        [--inception-per-class 16] [--output benchmarks/results/export.json]

Two runs, each trained by the real train stage in a fresh temporary folder, then exported
by the real export stage (`make export`, all three TFLite files):
  mobilenet   MobileNet v1 alpha 0.25 with the shared ImageNet weights, flowers-mini, 224 px,
              the default recipe: a real pretrained run, so accuracy and agreement mean
              something
  inception   InceptionV3 at 299 px, WEIGHTS=none, phase 1 only, on a few photos per class
              of flowers-mini: size and speed only (its accuracy is chance)
Per file: size and its ratio to float32, test accuracy and its change from the Keras model,
top-1 agreement with Keras, and CPU ms per image at batch 1 and 32 with their ratios to
float32. Latency is re-measured here over --rounds rounds, every model in turn within a
round (the machine's load moves all of them alike), and the median kept. Prints a table
and writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.backbones import preprocess  # noqa: E402
from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.evaluate.stage import scored_rows  # noqa: E402
from pipeline.export.scores import speed  # noqa: E402
from pipeline.export.stage import export  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.predict.classifier import load_classifier  # noqa: E402
from pipeline.predict.tflite import TFLiteModel, cpu_threads  # noqa: E402
from pipeline.training import train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "export.json"
SHARED = REPO.parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
FILES = {"keras": "model.keras", "tflite": "fp32", "tflite-fp16": "fp16", "tflite-int8": "int8"}


def subset(folder: Path, per_class: int, into: Path) -> Path:
    """The first ``per_class`` photos of each class of ``folder``, copied under ``into``."""
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        (into / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(photo, into / class_dir.name)
    return into


def trained(work: Path, folder: Path, overrides: list[str]) -> tuple[object, Path, float]:
    """A run trained by the real train stage in ``work``: (config, run folder, seconds)."""
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{folder}",
            f"paths.data={work / 'data'}",
            f"paths.reports={work / 'reports'}",
            f"paths.models={work / 'models'}",
            "train.run_name=bench",
            *overrides,
        ],
    )
    start = time.perf_counter()
    run_dir = Path(train(cfg).run_dir)
    return with_overrides(cfg, {"eval.run": run_dir.name}), run_dir, time.perf_counter() - start


def latencies(run_dir: Path, files: dict[str, Path], rounds: int, images: int) -> dict:
    """Median over ``rounds`` of each model's ``speed`` (ms per image, batch 1 and 32),
    the models taking turns within each round."""
    clf = load_classifier(run_dir)
    backbone = clf.spec.backbone
    rows = scored_rows(clf, "test")
    kept: list[np.ndarray] = []
    for batch in clf.eval_dataset(rows, preprocessed=False):
        kept.extend(batch.numpy()[: 32 - len(kept)])
    models = {"keras": lambda x: clf.model.predict_on_batch(preprocess(x, backbone))}
    models.update({fmt: TFLiteModel(path) for fmt, path in files.items()})
    raw: dict[str, list[dict]] = {name: [] for name in models}
    for round_ in range(rounds):
        for name, predict in models.items():
            raw[name].append(speed(predict, kept, images))
        print(
            f"  round {round_ + 1}: "
            + ", ".join(
                f"{n} {r[-1]['latency_ms_b1']:.1f}/{r[-1]['latency_ms_b32']:.1f}"
                for n, r in raw.items()
            )
            + " ms per image (batch 1/32)",
            flush=True,
        )
    return {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in raw.items()
    }


def case(name: str, cfg, run_dir: Path, train_s: float, rounds: int, images: int) -> dict:
    """Export the run (all TFLite files) and gather its rows, float32 as the reference."""
    result = export(cfg)
    figures = result.figures
    speeds = latencies(run_dir, result.files, rounds, images)
    every = {"keras": figures["keras"], **figures["variants"]}
    fp32 = every["tflite"]
    rows = {}
    for fmt, f in every.items():
        s = speeds[fmt]
        rows[fmt] = {
            "file": f["file"],
            "size_bytes": f["size_bytes"],
            "size_ratio": f["size_bytes"] / fp32["size_bytes"],
            "accuracy": f["accuracy"],
            "accuracy_change_points": 100 * (f["accuracy"] - figures["keras"]["accuracy"]),
            "macro_f1": f["macro_f1"],
            "top1_agreement": f["top1_agreement"],
            "max_probability_difference": f["max_probability_difference"],
            "latency_ms_b1": s["latency_ms_b1"],
            "latency_ms_b32": s["latency_ms_b32"],
            "latency_ratio_b1": s["latency_ms_b1"] / speeds["tflite"]["latency_ms_b1"],
            "latency_ratio_b32": s["latency_ms_b32"] / speeds["tflite"]["latency_ms_b32"],
            "export_stage": {k: f[k] for k in f if k.startswith(("latency", "throughput"))},
            "estimate": f.get("estimate"),
        }
    return {
        "name": name,
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": cfg.image_size,
        "test_images": figures["test_images"],
        "calibration_images": figures["calibration_images"],
        "train_seconds": train_s,
        "warnings": figures["warnings"],
        "variants": rows,
    }


def print_table(cases: list[dict]) -> None:
    header = (
        f"{'run':<10} {'file':<8} {'MiB':>7} {'size/fp32':>9} {'accuracy':>8} {'change':>7} "
        f"{'agree':>6} {'ms b1':>7} {'b1/fp32':>7} {'ms b32':>7} {'b32/fp32':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for c in cases:
        for fmt, r in c["variants"].items():
            print(
                f"{c['name']:<10} {FILES[fmt]:<8} {r['size_bytes'] / 2**20:>7.2f} "
                f"{r['size_ratio']:>9.3f} {r['accuracy']:>8.3f} "
                f"{r['accuracy_change_points']:>+7.1f} {r['top1_agreement']:>6.3f} "
                f"{r['latency_ms_b1']:>7.2f} {r['latency_ratio_b1']:>7.2f} "
                f"{r['latency_ms_b32']:>7.2f} {r['latency_ratio_b32']:>8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=SHARED / "datasets")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-images", type=int, default=20)
    parser.add_argument("--inception-per-class", type=int, default=16)
    parser.add_argument("--only", choices=("mobilenet", "inception"), default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    flowers = args.datasets / "flowers-mini"
    if not flowers.is_dir() or not MOBILENET.is_file():
        sys.exit(f"needs {flowers}/ and {MOBILENET} (the shared photos and weights)")
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    started = time.perf_counter()
    cases = []
    if args.only in (None, "mobilenet"):
        cfg, run_dir, seconds = trained(
            work / "mobilenet",
            flowers,
            ["model.backbone=mobilenet", "model.alpha=0.25", f"model.weights={MOBILENET}"],
        )
        cfg = with_overrides(cfg, {"export.latency_images": args.latency_images})
        cases.append(case("mobilenet", cfg, run_dir, seconds, args.rounds, args.latency_images))
    if args.only in (None, "inception"):
        photos = subset(flowers, args.inception_per_class, work / "inception-photos")
        cfg, run_dir, seconds = trained(
            work / "inception",
            photos,
            [
                "model.backbone=inception_v3",
                "model.weights=none",
                "input.image_size=299",
                "train.fine_tune_epochs=0",
            ],
        )
        cfg = with_overrides(
            cfg, {"export.calibration_images": 50, "export.latency_images": args.latency_images}
        )
        cases.append(case("inception", cfg, run_dir, seconds, args.rounds, args.latency_images))
    print_table(cases)
    print(
        f"{cpu_threads()} CPU threads; latency: median of {args.rounds} rounds, models in turn; "
        "inception has random weights (its accuracy and agreement mean nothing)"
    )
    write_json(
        args.output,
        {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cores": os.cpu_count(),
            "threads": cpu_threads(),
            "rounds": args.rounds,
            "latency_images": args.latency_images,
            "wall_seconds": time.perf_counter() - started,
            "cases": cases,
        },
    )
    print(f"wrote {args.output}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
