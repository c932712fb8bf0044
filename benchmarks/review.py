"""`make review` on real photo sets: its wall time, and how well it finds misfiled photos.

    python benchmarks/review.py [--datasets flowers-2k,intel-mini,flowers-mini]
        [--backbone efficientnet_lite0] [--noise 0.05] [--seeds 1,2,3,4,5]
        [--output benchmarks/results/review.json]

Time: per data set (a folder under ../shared/datasets/), in fresh processes and a fresh
data folder, `python -m pipeline data`, then `python -m pipeline review` with the feature
cache cold (extraction included), then again with it warm.

Detection: misfiling a photo changes neither its features nor its split (both follow its
content), so on the cached features of the training and validation photos, each seed
gives ``--noise`` of them a wrong label (another class, at random) and the review's own
functions judge them. Per probe C (and C chosen by out-of-fold log loss): recall of the
misfiled photos among the top 2 x noise-count suspects, recall and precision of the
flagged set, and the photos flagged on the unmodified labels. Means with 95% t intervals
over the seeds. The true label errors already in a set count against precision.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import CLASSES_FILE, load_split, read_classes  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.model import classifier_spec, resolve_weights  # noqa: E402
from pipeline.review.stage import split_features  # noqa: E402
from pipeline.review.suspects import (  # noqa: E402
    PROBE_GRID,
    label_suspects,
    out_of_fold_probabilities,
)

SHARED = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "benchmarks" / "results" / "review.json"
C_GRID = (0.001, 0.01, 0.1, 1.0)


def overrides(name: str, work: Path, backbone: str) -> list[str]:
    return [
        f"data.dataset=folder:{SHARED / name}",
        f"paths.data={work / 'data'}",
        f"paths.reports={work / 'reports'}",
        f"model.backbone={backbone}",
        "model.weights=imagenet",
    ]


def timed(stage: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", stage, *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t interval."""
    a = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0
    return float(a.mean()), float(half)


def misfile(labels: np.ndarray, classes: int, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(labels), round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[moved] = (labels[moved] + rng.integers(1, classes, len(moved))) % classes
    return moved, noisy


def best_c(y: np.ndarray, probs: dict[float, np.ndarray], grid: tuple[float, ...]) -> float:
    """The grid's C of lowest out-of-fold log loss (the review's own rule)."""
    return min(grid, key=lambda c: log_loss(y, probs[c], labels=np.unique(y)))


def detection(x: np.ndarray, y: np.ndarray, k: int, share: float, seeds: list[int]) -> dict:
    """Per probe: the figures over the seeds. The two "by OOF loss" rows take, per seed, the
    C of lowest out-of-fold log loss on the noisy labels: over the whole grid, and over the
    review's own PROBE_GRID (its default)."""
    grid = tuple(sorted({*C_GRID, *PROBE_GRID}))

    def oof(labels: np.ndarray) -> dict[float, np.ndarray]:
        return {c: out_of_fold_probabilities(x, labels, k, grid=(c,))[0] for c in grid}

    clean = oof(y)
    clean_verdicts = {c: label_suspects(y, p) for c, p in clean.items()}
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        moved, noisy = misfile(y, k, share, seed)
        probs = oof(noisy)
        probes = [
            *((f"C={c:g}", c, c) for c in C_GRID),
            ("OOF loss, all C", best_c(noisy, probs, grid), best_c(y, clean, grid)),
            (
                "default: OOF loss, 0.001-0.01",
                best_c(noisy, probs, PROBE_GRID),
                best_c(y, clean, PROBE_GRID),
            ),
        ]
        for name, c, c_clean in probes:
            verdict = label_suspects(noisy, probs[c])
            top = verdict.ranking()[: 2 * len(moved)]
            flagged = np.flatnonzero(verdict.flagged)
            r = rows.setdefault(name, {})
            r.setdefault("recall_top", []).append(np.isin(moved, top).mean())
            r.setdefault("recall", []).append(np.isin(moved, flagged).mean())
            r.setdefault("precision", []).append(
                np.isin(flagged, moved).mean() if len(flagged) else 1.0
            )
            r.setdefault("flagged_clean", []).append(float(clean_verdicts[c_clean].flagged.sum()))
            r.setdefault("C", []).append(c)
    return {name: {key: interval(v) for key, v in r.items()} for name, r in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="flowers-2k,intel-mini,flowers-mini")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"backbone": args.backbone, "noise": args.noise, "seeds": seeds, "sets": {}}
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cli = overrides(name, work, args.backbone)
            times = {
                "data_s": timed("data", cli),
                "review_cold_s": timed("review", cli),
                "review_warm_s": timed("review", cli),
            }
            cfg = load_config(None, cli)
            folder = cfg.dataset_dir()
            classes = read_classes(folder / CLASSES_FILE)
            rows = {s: load_split(folder, s) for s in ("train", "val", "test")}
            spec = classifier_spec(cfg)
            weights = resolve_weights(spec.backbone, spec.weights, spec.alpha, spec.size)
            features = split_features(cfg, classes, rows, spec, weights)
        x = np.concatenate([features["train"], features["val"]])
        y = np.array([r.label_index for r in rows["train"] + rows["val"]])
        found = detection(x, y, len(classes), args.noise, seeds)
        results["sets"][name] = {"judged_photos": len(y), **times, "detection": found}
        print(
            f"\n{name}: {len(y)} train+val photos; make data {times['data_s']:.0f} s, review "
            f"{times['review_cold_s']:.0f} s cold / {times['review_warm_s']:.0f} s warm"
        )
        print(
            f"{'probe':<30} {'recall@2n':>13} {'flag recall':>13} {'flag precision':>15} "
            f"{'flagged clean':>14}"
        )
        for probe, r in found.items():
            cells = [
                f"{100 * r[k][0]:5.1f} ± {100 * r[k][1]:4.1f}"
                for k in ("recall_top", "recall", "precision")
            ]
            mark = ""
            print(
                f"{probe:<30} {cells[0]:>13} {cells[1]:>13} {cells[2]:>15} "
                f"{r['flagged_clean'][0]:8.1f} ± {r['flagged_clean'][1]:3.1f}{mark}"
            )
    write_json(args.output, results)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
