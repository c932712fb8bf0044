"""The default recipe against the frozen-feature baseline, on real photo sets, over splits.

    python benchmarks/recipe.py [--datasets flowers-2k,intel-mini,flowers-mini]
        [--splits 1,2,3] [--set SECTION.KEY=VALUE ...] [--output benchmarks/results/recipe.json]

For every data set (a folder under ../shared/datasets/) and split seed, the whole train
stage as `make train` runs it (`python -m pipeline train`, the data stage and the feature
extraction included, in a fresh folder), timed, with BACKBONE=mobilenet, alpha 0.25 and the
shared ImageNet weights; every other option is the default (``--set`` changes one). Then,
on the run's own test split:
  recipe     the kept model's test accuracy (summary.json, as make evaluate scores it)
  baseline   the frozen-feature logistic regression the run fitted itself (C chosen on
             validation): what the photos give without fine-tuning
  probe C=1  a common reference: scikit-learn's LogisticRegression(C=1) on the raw
             pooled features of all training photos (the run's cached features)
  any gain   the kept model under train.keep_min_z=0: phase 2 kept on any mean
             validation-loss gain (what the paired rule guards against)
  flip       the run's kept model (the any-gain one) with test-time flip averaging
             (input.tta=flip), and how much longer its pass over the test photos takes
Each run trains with train.keep_min_z=0, so phase 2's model is scored on test whenever it
lowered the validation loss at all; the default rule (keep phase 2 only if its paired
per-image gain is more than train.keep_min_z standard errors) is then applied to the gain
the run recorded. Where it keeps phase 1, the recipe's accuracy is the baseline's: phase
1's exact head is the baseline's fit, so both rules are scored from the same runs.
Mean and 95% t interval over the splits, of each and of the paired differences. Prints a
table and writes benchmarks/results/recipe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.config import Config  # noqa: E402
from pipeline.data.manifest import load_split  # noqa: E402
from pipeline.evaluate.stage import scored_rows  # noqa: E402
from pipeline.experiment import mean_ci  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.predict.classifier import load_classifier  # noqa: E402
from pipeline.summary import TrainSummary, read_summary  # noqa: E402
from pipeline.training.phases import kept_phase  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "recipe.json"
SHARED = REPO.parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
METHODS = ("recipe", "any_gain", "baseline", "probe_c1", "flip")
DEFAULT_MIN_Z = Config().train.keep_min_z


def train_timed(
    folder: Path, work: Path, split_seed: int, changes: list[str]
) -> tuple[Path, float]:
    """One whole train stage in its own process, as `make train` runs it; (run, seconds)."""
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        f"data.dataset=folder:{folder}",
        f"data.split_seed={split_seed}",
        "model.backbone=mobilenet",
        "model.alpha=0.25",
        f"model.weights={MOBILENET}",
        f"paths.data={work / 'data'}",
        f"paths.models={work / 'models'}",
        f"paths.reports={work / 'reports'}",
        "train.run_name=run",
        "train.keep_min_z=0",
        *changes,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return work / "models" / "run", time.perf_counter() - start


def probe_c1(run_dir: Path, summary: TrainSummary) -> float:
    """LogisticRegression(C=1) on the raw cached features of the run's training photos."""
    from sklearn.linear_model import LogisticRegression

    caches = summary.phases[1].feature_cache
    data = {
        split: (
            np.load(caches[split]),
            [r.label_index for r in load_split(run_dir / "data", split)],
        )
        for split in ("train", "test")
    }
    model = LogisticRegression(C=1.0, max_iter=5000).fit(*data["train"])
    return float(model.score(*data["test"]))


def flip_figures(run_dir: Path) -> tuple[float, float]:
    """Test accuracy with flip averaging, and its pass's time over the plain pass's."""
    clf = load_classifier(run_dir)
    rows = scored_rows(clf, "test")
    labels = np.array([r.label_index for r in rows])
    seconds = {}
    accuracy = {}
    for tta in ("none", "flip", "none", "flip"):  # interleaved; the second of each counts
        start = time.perf_counter()
        probs = clf.probabilities(rows, tta=tta)
        seconds[tta] = time.perf_counter() - start
        accuracy[tta] = float(np.mean(probs.argmax(1) == labels))
    return accuracy["flip"], seconds["flip"] / seconds["none"]


def measure(folder: Path, split_seed: int, changes: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-recipe-{folder.name}-{split_seed}-"))
    print(f"\n== {folder.name}, split seed {split_seed} ({work}) ==", flush=True)
    run_dir, seconds = train_timed(folder, work, split_seed, changes)
    summary = read_summary(run_dir)
    flip, flip_cost = flip_figures(run_dir)
    phases = summary.phases
    if phases[1].method != "exact":
        sys.exit("the keep rules are scored from phase 1's exact head: keep train.head_fit=exact")
    two = phases.get(2)
    recorded = two.val_gain if two else None
    gain = asdict(recorded) if recorded else {"mean": 0.0, "se": 0.0, "z": 0.0}
    baseline = summary.baseline.test.accuracy
    any_gain = summary.test.accuracy  # the kept model, trained with keep_min_z=0
    default_keeps_two = kept_phase(phases, DEFAULT_MIN_Z) == 2
    return {
        "dataset": folder.name,
        "split_seed": split_seed,
        "train_images": summary.train_images,
        "test_images": summary.test.images,
        "train_seconds": seconds,
        "phase2_epochs": two.epochs if two else 0,
        "kept_phase": "2" if default_keeps_two else "1",
        "kept_phase_any_gain": str(summary.kept_phase),
        "phase2_val_gain": gain,
        "baseline_C": summary.baseline.C,
        "recipe": any_gain if default_keeps_two else baseline,
        "any_gain": any_gain,
        "baseline": baseline,
        "probe_c1": probe_c1(run_dir, summary),
        "flip": flip,
        "flip_time_ratio": flip_cost,
        "val": {
            "recipe": summary.final.val_accuracy,
            "baseline": summary.baseline.val.accuracy,
        },
    }


def summarise(runs: list[dict]) -> dict:
    out = {m: mean_ci([r[m] for r in runs]) for m in METHODS}
    out["train_seconds"] = mean_ci([r["train_seconds"] for r in runs])
    out["max_train_seconds"] = max(r["train_seconds"] for r in runs)
    for other in ("baseline", "probe_c1", "any_gain"):
        out[f"recipe_minus_{other}"] = mean_ci([r["recipe"] - r[other] for r in runs])
    out["flip_minus_any_gain"] = mean_ci([r["flip"] - r["any_gain"] for r in runs])
    out["flip_time_ratio"] = mean_ci([r["flip_time_ratio"] for r in runs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="flowers-2k,intel-mini,flowers-mini")
    parser.add_argument("--splits", default="1,2,3", help="data.split_seed values")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="JSON",
        help="re-summarise a saved run's JSON; trains nothing",
    )
    args = parser.parse_args()
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        names = list(dict.fromkeys(r["dataset"] for r in saved["runs"]))
        saved["summary"] = {
            n: summarise([r for r in saved["runs"] if r["dataset"] == n]) for n in names
        }
        report(saved["runs"], saved["summary"], saved["changes"])
        write_json(args.summarise, saved)
        print(f"wrote {args.summarise}")
        return
    if not MOBILENET.is_file():
        sys.exit(f"{MOBILENET} is missing: this benchmark needs the shared ImageNet weights")
    folders = [SHARED / "datasets" / name for name in args.datasets.split(",")]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        sys.exit(f"no such data set folder: {', '.join(missing)} (see ../shared/README.md)")
    splits = [int(s) for s in args.splits.split(",")]
    runs = [measure(folder, seed, args.set) for folder in folders for seed in splits]
    by_dataset = {f.name: summarise([r for r in runs if r["dataset"] == f.name]) for f in folders}
    report(runs, by_dataset, args.set)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cores": os.cpu_count(),
        "changes": args.set,
        "default_keep_min_z": DEFAULT_MIN_Z,
        "runs": runs,
        "summary": by_dataset,
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")


def report(runs: list[dict], by_dataset: dict, changes: list[str]) -> None:
    """The per-run table, then each data set's means and paired differences."""
    print(
        f"\nMobileNet 0.25 at 224 px unless --set says otherwise, default recipe "
        f"{' '.join(changes)}, phase 2 kept "
        f"when z > {DEFAULT_MIN_Z:g}; "
        f"{os.cpu_count()} cores; test accuracy"
    )
    header = (
        f"{'data set':13s} {'split':>5s} {'train':>6s} {'test':>5s} {'seconds':>8s} "
        + " ".join(f"{m:>9s}" for m in METHODS)
        + "  kept"
    )
    print(header)
    for r in runs:
        print(
            f"{r['dataset']:13s} {r['split_seed']:5d} {r['train_images']:6d} {r['test_images']:5d} "
            f"{r['train_seconds']:8.0f} "
            + " ".join(f"{r[m]:9.3f}" for m in METHODS)
            + f"  phase {r['kept_phase']} (z {r['phase2_val_gain']['z']:.2f})"
        )
    for name, s in by_dataset.items():
        print(f"{name}: mean over {s['recipe']['n']} splits (95% interval)")
        for key in (
            *METHODS,
            "recipe_minus_baseline",
            "recipe_minus_probe_c1",
            "recipe_minus_any_gain",
            "flip_minus_any_gain",
        ):
            print(f"  {key:24s} {s[key]['mean']:+.3f} ± {s[key]['ci95']:.3f}")
        print(
            f"  {'train seconds':24s} {s['train_seconds']['mean']:.0f} "
            f"(max {s['max_train_seconds']:.0f}); flip costs "
            f"{s['flip_time_ratio']['mean']:.2f}x the plain test pass"
        )


if __name__ == "__main__":
    main()
