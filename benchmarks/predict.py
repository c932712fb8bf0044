"""`make predict` throughput against a naive one-image-at-a-time loop, side by side.

    python benchmarks/predict.py [--folder ../shared/datasets/flowers-mini] [--backbone mobilenet]
        [--size 224] [--rounds 2]

Trains a short run with the real train stage (one epoch per phase: speed does not
depend on accuracy), then times, interleaved:
  predict   pipeline.predict.predict(): check every file, batched tf.data decode, CSV
  naive     for each file: PIL load, centre crop, resize, preprocess, model.predict(1 image)
Prints a table with the ratio and writes benchmarks/results/predict.json.
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

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.backbones import get_backbone, preprocess  # noqa: E402
from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.images import iter_files, load_rgb  # noqa: E402
from pipeline.predict import load_classifier, predict  # noqa: E402
from pipeline.training import train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "predict.json"


def naive_loop(paths: list[Path], run_dir: Path) -> int:
    """What a first notebook does: one file, one model call, no pipeline."""
    clf = load_classifier(run_dir)
    size, fraction = clf.cfg.image_size, clf.cfg.input.eval_crop_fraction
    backbone = get_backbone(clf.cfg.model.backbone)
    for path in paths:
        image = load_rgb(path)
        h, w = image.shape[:2]
        side = int(min(h, w) * fraction)
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size))
        x = preprocess(np.asarray(crop, np.float32)[None], backbone)
        clf.model.predict(x, verbose=0)
    return len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=REPO.parent / "shared/datasets/flowers-mini")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"{args.folder}: no such folder of class subfolders (give --folder)")

    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{args.folder}",
            f"paths.data={work / 'data'}",
            f"paths.reports={work / 'reports'}",
            f"paths.models={work / 'models'}",
            f"model.backbone={args.backbone}",
            "model.weights=none",
            f"input.image_size={args.size}",
            "train.head_epochs=1",
            "train.fine_tune_epochs=1",
            "train.run_name=bench",
        ],
    )
    run_dir = Path(train(cfg).run_dir)
    paths = sorted(p for p in iter_files(args.folder))
    predict_cfg = with_overrides(
        cfg,
        {
            "eval.run": str(run_dir),
            "predict.input": str(args.folder),
            "predict.output": str(work / "predictions.csv"),
        },
    )
    timings: dict[str, list[float]] = {"predict": [], "naive": []}
    for round_ in range(args.rounds):
        start = time.perf_counter()
        result = predict(predict_cfg)
        timings["predict"].append(result.classified / (time.perf_counter() - start))
        start = time.perf_counter()
        count = naive_loop(paths, run_dir)
        timings["naive"].append(count / (time.perf_counter() - start))
        print(
            f"round {round_ + 1}: predict {timings['predict'][-1]:.1f} img/s, "
            f"naive {timings['naive'][-1]:.1f} img/s",
            flush=True,
        )
    rates = {k: statistics.median(v) for k, v in timings.items()}
    ratio = rates["predict"] / rates["naive"]
    print(
        f"\n{len(paths)} photos, {args.backbone} at {args.size}px, {os.cpu_count()} cores, "
        f"median of {args.rounds} rounds (model load and file checks included)"
    )
    print(f"{'variant':8s} {'img/s':>8s}")
    for name, rate in rates.items():
        print(f"{name:8s} {rate:8.1f}")
    print(f"ratio predict / naive: {ratio:.2f}x")
    write_json(
        args.output,
        {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "images": len(paths),
            "backbone": args.backbone,
            "size": args.size,
            "cores": os.cpu_count(),
            "images_per_s": rates,
            "ratio": ratio,
            "raw": timings,
        },
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
