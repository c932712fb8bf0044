"""Runs of one recipe choice against another, paired on the same data splits.

    python benchmarks/paired_runs.py FOLDER [FOLDER ...] --runs BASE,OTHER[,OTHER ...]
        [--earlier benchmarks/results/EARLIER.json] [--output benchmarks/results/paired_runs.json]

A per-backbone recipe value (phase 2's epochs, its cut point) is chosen by training both
choices on the same split: each FOLDER is one split's working folder, as
`benchmarks/recipe.py` leaves it (/tmp/bench-recipe-<dataset>-<split>-*/, its data stage
and feature cache reused), holding one run per choice under models/<name>/. A run beside
the recipe's own ("run") is made with the recipe's command and its other options, e.g.

    python -m pipeline train data.dataset=folder:DATASET data.split_seed=S \\
        paths.data=FOLDER/data paths.models=FOLDER/models paths.reports=FOLDER/reports \\
        model.backbone=efficientnet_lite0 model.alpha=1.0 model.weights=imagenet \\
        train.keep_min_z=0 train.run_name=ep6 train.fine_tune_epochs=6

Per run, from its summary.json: phase 2's best validation loss and accuracy (what the
choice is made on), its epochs and seconds, the kept model's test accuracy and the
frozen-feature baseline's. ``--earlier`` adds the splits of an earlier output of this
script (its working folders need not exist any more; a split in both is an error). Then,
for each OTHER, the paired differences against BASE with 95% t intervals over the splits.
Validation chooses; test confirms. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.experiment import mean_ci  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.runs import CONFIG_FILE  # noqa: E402
from pipeline.summary import read_summary  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "paired_runs.json"
COMPARED = ("val_loss", "val_accuracy", "test_accuracy")


def run_figures(run_dir: Path) -> dict:
    """What one run's summary.json says about its phase 2 and its test split."""
    summary = read_summary(run_dir)
    if summary is None or 2 not in summary.phases:
        raise SystemExit(f"{run_dir}: no finished run with a phase 2 (summary.json)")
    phase = summary.phases[2]
    return {
        "split_seed": load_config(run_dir / CONFIG_FILE).data.split_seed,
        "fine_tune_after": phase.first_trainable_layer,
        "epochs": phase.epochs,
        "best_epoch": phase.best_epoch,
        "val_loss": phase.best_val_loss,
        "val_accuracy": phase.best_val_accuracy,
        "phase2_seconds": phase.seconds,
        "test_accuracy": summary.test.accuracy,
        "baseline_test_accuracy": summary.baseline.test.accuracy,
        "kept_phase": summary.kept_phase,
    }


def paired(rows: dict[str, list[dict]], base: str) -> dict[str, dict]:
    """Each other run's differences against ``base``, split by split."""
    return {
        name: {
            key: mean_ci([o[key] - b[key] for o, b in zip(runs, rows[base], strict=True)])
            for key in COMPARED
        }
        for name, runs in rows.items()
        if name != base
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--runs", required=True, help="BASE,OTHER,...: run names to compare")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--earlier", type=Path, help="an earlier output of this script: its splits are added"
    )
    args = parser.parse_args()
    names = args.runs.split(",")
    rows = {n: [run_figures(f / "models" / n) for f in args.folders] for n in names}
    if args.earlier:
        earlier = json.loads(args.earlier.read_text())["runs"]
        missing = [n for n in names if n not in earlier]
        if missing:
            raise SystemExit(f"{args.earlier} has no runs named {', '.join(missing)}")
        again = {r["split_seed"] for r in earlier[names[0]]} & {
            r["split_seed"] for r in rows[names[0]]
        }
        if again:
            raise SystemExit(f"split(s) {sorted(again)} are in {args.earlier} and in a FOLDER")
        rows = {n: earlier[n] + rows[n] for n in names}
    for n in names[1:]:
        seeds = [r["split_seed"] for r in rows[n]]
        if seeds != [r["split_seed"] for r in rows[names[0]]]:
            raise SystemExit(f"{n} and {names[0]} are not on the same splits: {seeds}")
    columns = "trains after | epochs (best) | val loss | val acc | test acc | baseline"
    print(f"| run | split | {columns} | phase 2 s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        for r in rows[n]:
            print(
                f"| {n} | {r['split_seed']} | {r['fine_tune_after']} | {r['epochs']} "
                f"({r['best_epoch']}) | {r['val_loss']:.4f} | {r['val_accuracy']:.3f} | "
                f"{r['test_accuracy']:.3f} | {r['baseline_test_accuracy']:.3f} | "
                f"{r['phase2_seconds']:.0f} |"
            )
    differences = paired(rows, names[0])
    print(f"\n| against {names[0]} | val loss | val acc (points) | test acc (points) |")
    print("| --- | ---: | ---: | ---: |")
    for n, d in differences.items():
        loss, val, test = (d[k] for k in COMPARED)
        print(
            f"| {n} | {loss['mean']:+.4f} ± {loss['ci95']:.4f} | "
            f"{100 * val['mean']:+.1f} ± {100 * val['ci95']:.1f} | "
            f"{100 * test['mean']:+.1f} ± {100 * test['ci95']:.1f} |"
        )
    write_json(
        args.output,
        {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "base": names[0],
            "runs": rows,
            "differences": differences,
        },
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
