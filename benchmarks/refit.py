"""Does the frozen-feature head gain from the validation photos once its choices are made?

    python benchmarks/refit.py RUN_DIR [RUN_DIR ...] [--folds 5]
        [--output benchmarks/results/refit.json]

Small photo sets lose most to held-out photos: with 60 photos a class, 30% go to validation
and test. On each run's own cached features (train, validation and test, as the train
stage extracted them) this compares, on the untouched test split:

  val C      the recipe's phase-1 head: C chosen on validation, fitted on train
  refit      the same C, fitted again on train + validation
  cv C       C chosen by stratified k-fold log loss over train + validation, fitted on both
  cv C train C chosen by k-fold over train alone, fitted on train (isolates the choice of C)
  raw val C  as val C, on the features as they are (no standardisation)
  raw C=1    C = 1 on the features as they are, fitted on train (benchmarks/recipe.py's probe)
  val picks  val C or raw val C, whichever has the lower validation log loss

and reports per-run test accuracy, the paired differences against "val C" with 95% t
intervals per data set and over every run. Runs to give: the ones `make bench-recipe`
leaves in /tmp/bench-recipe-<dataset>-<split>-*/ (their data/ and models/run/). Only the
head is refit here, so the comparison is with the frozen-feature head, the one the recipe
keeps on small sets. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import load_split  # noqa: E402
from pipeline.experiment import mean_ci  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.runs import CONFIG_FILE  # noqa: E402
from pipeline.summary import TrainSummary, read_summary  # noqa: E402
from pipeline.training.head import C_GRID, fit_logistic_head  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "refit.json"
METHODS = ("val C", "refit", "cv C", "cv C train", "raw val C", "raw C=1", "val picks")


def cached_split(run_dir: Path, summary: TrainSummary, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, label indices) of one split: the train stage's feature cache and the split
    the run recorded."""
    path = Path(summary.phases[1].feature_cache[split])
    cached = json.loads(path.with_suffix(".json").read_text())["split"]
    labels = np.array([r.label_index for r in load_split(run_dir / "data", split)])
    features = np.load(path)
    if cached != split or len(features) != len(labels):
        raise SystemExit(f"{path}: not the {split} split recorded in {run_dir / 'data'}")
    return features, labels


def _head(c: float, weights: dict | None, standardise: bool = True):
    model = LogisticRegression(C=c, max_iter=5000, class_weight=weights)
    return make_pipeline(StandardScaler(), model) if standardise else model


def raw_val_choice(
    tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, vy: np.ndarray, weights: dict | None
) -> tuple[float, float]:
    """(C, its validation log loss) of lowest validation log loss without standardisation
    (a wider grid: raw features are not unit-scaled)."""
    losses = {}
    for c in (*C_GRID, 30.0, 100.0):
        probs = _head(c, weights, False).fit(tx, ty).predict_proba(vx)
        losses[c] = log_loss(vy, probs, labels=np.unique(ty))
    best = min(losses, key=losses.get)
    return best, losses[best]


def cv_choice(x: np.ndarray, y: np.ndarray, folds: int, weights: dict | None) -> float:
    """The C of lowest out-of-fold log loss over ``folds`` stratified folds."""
    split = StratifiedKFold(folds, shuffle=True, random_state=0)
    losses = {}
    for c in C_GRID:
        probs = cross_val_predict(_head(c, weights), x, y, cv=split, method="predict_proba")
        losses[c] = log_loss(y, probs, labels=np.unique(y))
    return min(losses, key=losses.get)


def run_figures(run: Path, folds: int) -> dict:
    run_dir = run / "models" / "run"
    summary = read_summary(run_dir)
    cw = summary.class_weights
    weights = None if cw is None else dict(enumerate(map(float, cw)))
    (tx, ty), (vx, vy), (sx, sy) = (
        cached_split(run_dir, summary, s) for s in ("train", "val", "test")
    )
    head = fit_logistic_head(tx, ty, vx, vy, len(summary.classes), cw)
    both_x, both_y = np.concatenate([tx, vx]), np.concatenate([ty, vy])
    cv_both = cv_choice(both_x, both_y, folds, weights)
    cv_train = cv_choice(tx, ty, folds, weights)
    raw_c, raw_loss = raw_val_choice(tx, ty, vx, vy, weights)
    std_loss = min(row["val_loss"] for row in head.grid)

    def accuracy(c: float, x: np.ndarray, y: np.ndarray, standardise: bool = True) -> float:
        return float((_head(c, weights, standardise).fit(x, y).predict(sx) == sy).mean())

    recipe, raw = head.scores(sx, sy)["accuracy"], accuracy(raw_c, tx, ty, False)
    return {
        "run": str(run),
        "dataset": Path(summary.dataset.split(":", 1)[-1]).name,
        "split_seed": load_config(run_dir / CONFIG_FILE).data.split_seed,
        "train": len(ty), "val": len(vy), "test": len(sy),
        "val_loss": {"val C": std_loss, "raw val C": raw_loss},
        "C": {"val C": head.C, "cv C": cv_both, "cv C train": cv_train, "raw val C": raw_c},
        "accuracy": {
            "val C": recipe,
            "refit": accuracy(head.C, both_x, both_y),
            "cv C": accuracy(cv_both, both_x, both_y),
            "cv C train": accuracy(cv_train, tx, ty),
            "raw val C": raw,
            "raw C=1": accuracy(1.0, tx, ty, False),
            "val picks": raw if raw_loss < std_loss else recipe,
        },
    }  # fmt: skip


def summarise(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["dataset"], []).append(row)
    groups["all runs"] = rows
    return {
        name: {
            "runs": len(members),
            **{m: mean_ci([r["accuracy"][m] for r in members]) for m in METHODS},
            **{
                f"{m} - val C": mean_ci(
                    [r["accuracy"][m] - r["accuracy"]["val C"] for r in members]
                )
                for m in METHODS[1:]
            },
        }
        for name, members in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench-recipe folders")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = [run_figures(run, args.folds) for run in args.runs]
    print(f"| data set | split | train/val/test | {' | '.join(METHODS)} | C (val, cv, raw) |")
    print("| --- | ---: | --- |" + " ---: |" * len(METHODS) + " --- |")
    for r in rows:
        accs = " | ".join(f"{r['accuracy'][m]:.3f}" for m in METHODS)
        print(
            f"| {r['dataset']} | {r['split_seed']} | {r['train']}/{r['val']}/{r['test']} | "
            f"{accs} | {r['C']['val C']:g}, {r['C']['cv C']:g}, {r['C']['raw val C']:g} |"
        )
    summary = summarise(rows)
    differences = " | ".join(f"{m} - val C (points)" for m in METHODS[1:])
    print(f"\n| data set | runs | {differences} |")
    print("| --- | ---: |" + " ---: |" * (len(METHODS) - 1))
    for name, s in summary.items():
        cells = " | ".join(
            f"{100 * s[f'{m} - val C']['mean']:+.1f} ± {100 * s[f'{m} - val C']['ci95']:.1f}"
            for m in METHODS[1:]
        )
        print(f"| {name} | {s['runs']} | {cells} |")
    command = "refit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(
        args.output, {"command": command, "folds": args.folds, "runs": rows, "summary": summary}
    )
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
