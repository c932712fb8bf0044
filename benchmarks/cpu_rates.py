"""CPU training rates per backbone, the figures `make train` forecasts its run time from.

    python benchmarks/cpu_rates.py [--backbones inception_v3,efficientnet_lite0]
        [--batch 32] [--steps 3] [--images 96] [--output pipeline/configs/cpu_rates.json]

For each backbone at its own ImageNet size, on this machine's CPU:
  features  images/s of phase 1's one pass: real photos (tests/fixtures/flowers-mini)
            decoded, centre-cropped and run through the frozen base (the feature cache)
  phase2    images/s of phase 2's training (pipeline.training.loop.fit, the backbone's own
            cut point) on the same photos through the real augmented input pipeline
Weights are random (speed does not depend on their values), so nothing is downloaded.
Prints a table and writes the JSON the train stage reads (shipped with the package).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.images import check_images, iter_files  # noqa: E402
from pipeline.model import build_classifier, classifier_spec  # noqa: E402
from pipeline.predict.classifier import rows_from_checks  # noqa: E402
from pipeline.training.features import extract_features  # noqa: E402
from pipeline.training.forecast import RATES_FILE  # noqa: E402

PHOTOS = REPO / "tests" / "fixtures" / "flowers-mini"


def _train_benchmark():
    """benchmarks/train.py as a module: its step timer, the one its throughput uses."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def feature_rate(cfg, rows, batch: int) -> float:
    """Images/s of the frozen base's pass over the evaluation crops, first batch excluded."""
    spec = classifier_spec(cfg)
    model = build_classifier(spec, 5)
    extract_features(model, rows[:batch], cfg.input, spec.backbone, batch)  # traces the graph
    start = time.perf_counter()
    extract_features(model, rows, cfg.input, spec.backbone, batch)
    return len(rows) / (time.perf_counter() - start)


def phase2_rate(cfg, rows, batch: int, steps: int) -> float:
    """Images/s of phase 2's step on augmented real photos, first step excluded."""
    import numpy as np
    import tensorflow as tf

    from pipeline.inputs import build_train_dataset
    from pipeline.model import freeze_for_phase, training_forward
    from pipeline.training.feeds import Feed
    from pipeline.training.loop import compile_for_training, fit

    bench = _train_benchmark()
    spec = classifier_spec(cfg)
    model = build_classifier(spec, 5)
    freeze_for_phase(model, spec, 2)
    strategy = tf.distribute.get_strategy()
    compile_for_training(model, strategy, 1e-4, cfg.train)
    ds = build_train_dataset(
        rows, cfg.input, spec.size, 5, cfg.train.seed, backbone=spec.backbone, batch_size=batch
    )
    train = Feed(lambda ctx: ds.repeat(), steps + 1, batch)
    one = next(iter(ds))
    val = Feed(
        lambda ctx: tf.data.Dataset.from_tensors((one[0][:1], one[1][:1], tf.ones(1))), 1, batch
    )
    timer = bench._StepTimer()
    forward = training_forward(model, spec.backbone)
    fit(model, train, val, 1, [timer], strategy, verbose=0, forward=forward)
    return batch / float(np.median(timer.times[1:]))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="inception_v3,efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed phase-2 steps")
    parser.add_argument("--images", type=int, default=96, help="photos in the feature pass")
    parser.add_argument("--output", type=Path, default=REPO / "pipeline" / RATES_FILE)
    args = parser.parse_args()
    files = sorted(iter_files(PHOTOS))[: args.images]
    rows = rows_from_checks(check_images(files, progress=False))
    rates = {}
    for name in args.backbones.split(","):
        cfg = load_config(
            None, [f"model.backbone={name}", "model.weights=none", f"input.batch_size={args.batch}"]
        )
        print(f"== {name} at {cfg.image_size} px", flush=True)
        rates[name] = {
            "size": cfg.image_size,
            "batch": args.batch,
            "features_per_s": feature_rate(cfg, rows, args.batch),
            "phase2_per_s": phase2_rate(cfg, rows, args.batch, args.steps),
        }
    cores = os.cpu_count() or 1
    print(f"\n{cores} cores, {cpu_name()}; images/s")
    print(f"{'backbone':20s} {'size':>5s} {'features':>9s} {'phase 2':>8s}")
    for name, r in rates.items():
        print(f"{name:20s} {r['size']:5d} {r['features_per_s']:9.1f} {r['phase2_per_s']:8.1f}")
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": date.today().isoformat(),
        "cores": cores,
        "cpu": cpu_name(),
        "backbones": rates,
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
