"""Training benchmark, side by side in one run, on real photos, through the train stage itself.

    python benchmarks/train.py [--folder ../shared/datasets/flowers-mini] [--size 299]
        [--epochs 10] [--batch 16] [--steps 5] [--splits 42,7,1] [--seeds 1,2,3]
        [--sections phase1,throughput,augmentation,transfer] [--set KEY=VALUE ...] [--no-random]

Sections:
  phase1        phase 1 of InceptionV3 (frozen base, new head), same data and epochs, two
                ways: on cached features (the default; the one extraction pass counted) and
                the Keras guide's way (the frozen base runs on every image every epoch). Wall
                time of the phase, the ratio, and how far apart the two heads end up.
  throughput    training images/s at size x size (random images, so the model is measured,
                not JPEG decoding): the phase-2 step (mixed9 up trains) and a full fine-tuning
                step; InceptionV3's FLOPs per image (pipeline.memory's count), the achieved
                FLOP/s and its fraction of this machine's peak (a large float32 matmul here).
  augmentation  the default augmentation (Inception random resized crop + flip) against the
                Keras guide's (flip, RandomRotation(0.1), RandomZoom(0.1)): the same short
                two-phase run of the shared ImageNet MobileNet (alpha 0.25, 160 px) on
                flowers-mini, test accuracy and training images/s of each.
  transfer      what the ImageNet weights buy, over several data splits (--splits) and
                training seeds (--seeds) of flowers-mini: a linear probe (scikit-learn
                logistic regression on the frozen base's pooled features of the centre
                crops), the two-phase fine-tuning of configs/transfer.toml (the transfer
                test's recipe), and the same run from random weights; test accuracy of
                each (as make evaluate scores it), and the paired differences
                (same split, same seed) with 95% t intervals. --set section.key=value
                changes the recipe (repeatable), --no-random leaves out the random weights.
Weights: InceptionV3's ImageNet file is not needed (speed does not depend on the values); the
augmentation and transfer sections need ../shared/weights/mobilenet_2_5_224_tf_no_top.h5.
Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.config import (  # noqa: E402
    Config,
    load_config,
    parse_override,
    with_overrides,
)
from pipeline.data.manifest import CLASSES_FILE, load_split, read_classes  # noqa: E402
from pipeline.data.stage import prepare_data  # noqa: E402
from pipeline.evaluate.stage import scored_rows  # noqa: E402
from pipeline.experiment import mean_ci  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.memory import estimate_for_run  # noqa: E402
from pipeline.model import (  # noqa: E402
    build_classifier,
    classifier_spec,
    freeze_for_phase,
    training_forward,
)
from pipeline.predict.classifier import load_classifier  # noqa: E402
from pipeline.recipes import configs_dir, read_config_file  # noqa: E402
from pipeline.training import train  # noqa: E402
from pipeline.training.features import extract_features  # noqa: E402
from pipeline.training.feeds import Feed  # noqa: E402
from pipeline.training.loop import fit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train.json"
SHARED = REPO.parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
# The transfer test's recipe (tests/test_train.py loads the same file), as overrides.
TRANSFER_RECIPE = {
    f"{section}.{key}": value
    for section, values in read_config_file(configs_dir() / "transfer.toml").items()
    for key, value in values.items()
}
GUIDE_AUGMENTATION = {
    "input.crop_area_min": 1.0,
    "input.crop_aspect_min": 1.0,  # whole image, resized
    "input.rotation": 0.1,
    "input.zoom": 0.1,  # flip stays on, as in both
}


def held_out_accuracy(run_dir: Path) -> float:
    """Test accuracy of a finished run, as make evaluate scores it (the run's own split)."""
    classifier = load_classifier(run_dir)
    rows = scored_rows(classifier, "test")
    predicted = classifier.probabilities(rows).argmax(1)
    return float(np.mean(predicted == [r.label_index for r in rows]))


def phase_one(cfg: Config, epochs: int) -> dict:
    """Cached features against the frozen base on every epoch, same data, same epochs."""
    options = {
        "model.weights": "none",
        "train.head_fit": "gradient",  # Adam, epoch by epoch, both ways
        "train.head_epochs": epochs,
        "train.fine_tune_epochs": 0,
        "train.patience": 1000,
        "train.lr_patience": 1000,
    }
    runs = {}
    for name, cached in (("cached", True), ("plain", False)):
        print(f"\n== phase 1, {name} ==", flush=True)
        run_cfg = with_overrides(
            cfg, {**options, "train.cache_features": cached, "train.run_name": f"phase1-{name}"}
        )
        runs[name] = train(run_cfg)
    heads = [
        keras.models.load_model(r.run_dir / "model.keras").get_layer("predictions")
        for r in runs.values()
    ]
    out = {}
    for name, result in runs.items():
        p = result.summary.phases[1]
        # Both extract the features once for the run's baseline; only the cached way
        # trains on them, so only there is the extraction part of phase 1.
        features = (p.feature_seconds or 0.0) if name == "cached" else 0.0
        out[name] = {
            "phase_seconds": p.seconds + features,
            "feature_seconds": features,
            "epoch_seconds": p.seconds / p.epochs,
            "epochs": p.epochs,
            "best_val_accuracy": p.best_val_accuracy,
            "stage_seconds": result.summary.seconds,
        }
    out["speedup"] = out["plain"]["phase_seconds"] / out["cached"]["phase_seconds"]
    out["max_head_weight_difference"] = float(
        max(np.abs(a - b).max() for a, b in zip(heads[0].get_weights(), heads[1].get_weights()))
    )
    return out


class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def step_rate(cfg: Config, phase: str, batch: int, steps: int) -> float:
    """Images/s of the real training step (pipeline.training.loop.fit), first step excluded."""
    strategy = tf.distribute.get_strategy()
    spec = classifier_spec(cfg)
    model = build_classifier(spec, 5)
    if phase == "full":
        model.trainable = True
        for layer in model.get_layer("base").layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    else:
        freeze_for_phase(model, spec, 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    size = cfg.image_size
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"))
    labels = tf.one_hot(rng.integers(0, 5, batch), 5)
    feed = Feed(
        lambda ctx: tf.data.Dataset.from_tensors((images, labels)).repeat(), steps + 1, batch
    )
    val = Feed(
        lambda ctx: tf.data.Dataset.from_tensors((images[:1], labels[:1], tf.ones(1))), 1, batch
    )
    timer = _StepTimer()
    fit(
        model,
        feed,
        val,
        1,
        [timer],
        strategy,
        verbose=0,
        forward=training_forward(model, spec.backbone),
    )
    return batch / float(np.median(timer.times[1:]))


def peak_flops(n: int = 4096, repeats: int = 5) -> float:
    """Float32 matmul FLOP/s on every core: the practical peak of this machine."""
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul().numpy()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        matmul().numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def throughput(cfg: Config, batch: int, steps: int) -> dict:
    flops = estimate_for_run(cfg, 5).flops_per_image
    phase2_flops = next(v for k, v in flops.train.items() if k.startswith("phase 2"))
    full_flops = 3 * flops.forward  # forward + two backward products per layer
    peak = peak_flops()
    out = {"forward_flops_per_image": flops.forward, "peak_flops_per_s": peak}
    for name, per_image in (("phase2", phase2_flops), ("full", full_flops)):
        print(f"\n== training step, {name} ==", flush=True)
        rate = step_rate(cfg, name, batch, steps)
        out[name] = {
            "images_per_s": rate,
            "train_flops_per_image": per_image,
            "achieved_flops_per_s": rate * per_image,
            "fraction_of_peak": rate * per_image / peak,
        }
    return out


def augmentation(cfg: Config) -> dict:
    out = {}
    for name, extra in (("default", {}), ("keras_guide", GUIDE_AUGMENTATION)):
        print(f"\n== augmentation: {name} ==", flush=True)
        run_cfg = with_overrides(
            cfg,
            {
                **TRANSFER_RECIPE,
                **extra,
                "model.weights": str(MOBILENET),
                "train.run_name": f"augment-{name}",
            },
        )
        result = train(run_cfg)
        phase2 = result.summary.phases[2]
        out[name] = {
            "test_accuracy": held_out_accuracy(result.run_dir),
            "val_accuracy": result.summary.final.val_accuracy,
            "phase2_epochs": phase2.epochs,
            "phase2_images_per_s": phase2.train_images_per_s,
        }
    out["accuracy_difference"] = (
        out["default"]["test_accuracy"] - out["keras_guide"]["test_accuracy"]
    )
    return out


def linear_probe(cfg: Config) -> float:
    """Test accuracy of a logistic regression on the frozen base's pooled features: the bar
    that fine-tuning has to clear for its cost to be worth paying."""
    from sklearn.linear_model import LogisticRegression

    spec = classifier_spec(cfg)
    model = build_classifier(spec, len(read_classes(cfg.dataset_dir() / CLASSES_FILE)))
    data = {}
    for split in ("train", "test"):
        rows = load_split(cfg.dataset_dir(), split)
        # phase 1's own features
        features = extract_features(model, rows, cfg.input, spec.backbone, cfg.input.batch_size)
        data[split] = (features, [r.label_index for r in rows])
    return float(LogisticRegression(C=1.0, max_iter=5000).fit(*data["train"]).score(*data["test"]))


def transfer(
    cfg: Config,
    splits: list[int],
    seeds: list[int],
    changes: dict[str, str] | None = None,
    random_weights: bool = True,
) -> dict:
    """Probe, fine-tuning and random weights on the same splits; fine-tuning and random
    weights with the same seeds, so every difference is paired. ``changes`` alter the
    recipe for all three (the probe's features follow its image size)."""
    recipe = {**TRANSFER_RECIPE, **(changes or {})}
    trained = {"fine_tuned": str(MOBILENET)}
    if random_weights:
        trained["random_weights"] = "none"
    runs = []
    for split_seed in splits:
        split_cfg = with_overrides(
            cfg,
            {
                **recipe,
                "model.weights": str(MOBILENET),
                "data.split_seed": split_seed,
                "paths.data": str(Path(cfg.paths.data).with_name(f"data-split{split_seed}")),
            },
        )
        prepare_data(split_cfg, progress=False)
        probe = linear_probe(split_cfg)
        test_images = len(load_split(split_cfg.dataset_dir(), "test"))
        for seed in seeds:
            row = {"split_seed": split_seed, "seed": seed, "test_images": test_images}
            row.update(linear_probe=probe)
            for name, weights in trained.items():
                print(f"\n== transfer: split {split_seed}, seed {seed}, {name} ==", flush=True)
                run_cfg = with_overrides(
                    split_cfg,
                    {
                        "model.weights": weights,
                        "train.seed": seed,
                        "train.run_name": f"transfer-{name}-split{split_seed}-s{seed}",
                    },
                )
                row[name] = held_out_accuracy(train(run_cfg).run_dir)
            runs.append(row)
    methods = ["linear_probe", *trained]
    summary = {m: mean_ci([r[m] for r in runs]) for m in methods}
    for a, b in (("fine_tuned", "linear_probe"), ("fine_tuned", "random_weights")):
        if b in methods:
            summary[f"{a}_minus_{b}"] = mean_ci([r[a] - r[b] for r in runs])
    return {"recipe": recipe, "changes": changes or {}, "runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=SHARED / "datasets/flowers-mini")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--epochs", type=int, default=10, help="phase-1 epochs, both ways")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per training step")
    parser.add_argument("--splits", default="42,7,1", help="transfer: data.split_seed values")
    parser.add_argument("--seeds", default="1,2,3", help="transfer: train.seed values")
    parser.add_argument("--sections", default="phase1,throughput,augmentation,transfer")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="transfer: change the test's recipe (repeatable), e.g. --set train.ema=0.99",
    )
    parser.add_argument(
        "--no-random", action="store_true", help="transfer: skip the random-weights runs"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"{args.folder}: no such folder of class subfolders (give --folder)")
    sections = set(args.sections.split(","))
    if sections & {"augmentation", "transfer"} and not MOBILENET.is_file():
        sys.exit(f"{MOBILENET} is missing: augmentation and transfer need it (or leave them out)")

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = load_config(
        None,
        [
            f"data.dataset=folder:{args.folder}",
            f"paths.data={work / 'data'}",
            f"paths.models={work / 'models'}",
            f"paths.reports={work / 'reports'}",
            f"input.image_size={args.size}",
            f"input.batch_size={args.batch}",
            "model.weights=none",
        ],
    )
    prepare_data(cfg, progress=False)
    results: dict = {}
    if "phase1" in sections:
        results["phase1"] = phase_one(cfg, args.epochs)
    if "throughput" in sections:
        results["throughput"] = throughput(cfg, args.batch, args.steps)
    if "augmentation" in sections:
        results["augmentation"] = augmentation(cfg)
    if "transfer" in sections:
        splits, seeds = ([int(v) for v in text.split(",")] for text in (args.splits, args.seeds))
        changes = {f"{sec}.{key}": value for sec, key, value in map(parse_override, args.set)}
        results["transfer"] = transfer(cfg, splits, seeds, changes, not args.no_random)

    train_images = len(load_split(cfg.dataset_dir(), "train"))
    print(
        f"\nInceptionV3 at {args.size}x{args.size}, batch {args.batch}, {os.cpu_count()} "
        f"cores, {train_images} training photos from {args.folder}"
    )
    if "phase1" in results:
        r = results["phase1"]
        print(
            f"{'phase 1, ' + str(args.epochs) + ' epochs':28s} {'seconds':>9s} "
            f"{'s/epoch':>8s} {'val acc':>8s}"
        )
        for name in ("cached", "plain"):
            v = r[name]
            print(
                f"  {name:26s} {v['phase_seconds']:9.1f} {v['epoch_seconds']:8.2f} "
                f"{v['best_val_accuracy']:8.3f}"
            )
        print(
            f"  cached is {r['speedup']:.1f}x faster; heads differ by at most "
            f"{r['max_head_weight_difference']:.2e}"
        )
    if "throughput" in results:
        r = results["throughput"]
        print(
            f"FLOPs per image (forward): {r['forward_flops_per_image'] / 1e9:.2f} G; "
            f"peak (float32 matmul): {r['peak_flops_per_s'] / 1e9:.0f} GFLOP/s"
        )
        for name in ("phase2", "full"):
            v = r[name]
            print(
                f"  {name + ' training step':26s} {v['images_per_s']:7.2f} img/s "
                f"{v['achieved_flops_per_s'] / 1e9:7.1f} GFLOP/s "
                f"{100 * v['fraction_of_peak']:5.1f}% of peak"
            )
    if "augmentation" in results:
        r = results["augmentation"]
        for name in ("default", "keras_guide"):
            v = r[name]
            print(
                f"  augmentation {name:13s} test acc {v['test_accuracy']:.3f} "
                f"(val {v['val_accuracy']:.3f}), phase 2 {v['phase2_images_per_s']:.0f} img/s"
            )
    if "transfer" in results:
        r = results["transfer"]
        print(f"{'transfer (test accuracy)':28s} {'probe':>7s} {'tuned':>7s} {'random':>7s}")
        for run in r["runs"]:
            print(
                f"  split {run['split_seed']:<4d} seed {run['seed']:<4d} "
                f"{run['test_images']:4d} img {run['linear_probe']:7.3f} "
                f"{run['fine_tuned']:7.3f} {run.get('random_weights', math.nan):7.3f}"
            )
        for name, v in r["summary"].items():
            print(f"  {name:34s} {v['mean']:+.3f} ± {v['ci95']:.3f} (95%, n={v['n']})")
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "size": args.size,
        "batch": args.batch,
        "cores": os.cpu_count(),
        "train_images": train_images,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        **results,
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
