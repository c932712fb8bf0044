"""How often the int8 TFLite file picks the Keras model's class, over several real runs.

    python benchmarks/int8_agreement.py RUN_DIR [RUN_DIR ...]
        [--output benchmarks/results/int8_agreement.json]

One run's test split is a few dozen photos: its agreement share moves by 1.5 points per
photo. This exports the int8 file of each run given (the real export stage, calibrated as
`make export` does, into a copy of the run so the original is untouched) and reports each
run's top-1 agreement and accuracy change, their mean over runs with a 95% t interval, and
the pooled share over every test photo with its Wilson interval. Runs to give: pretrained
runs on different split seeds, e.g. the ones `make bench-recipe` leaves in
/tmp/bench-recipe-flowers-mini-*/models/run. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scipy.stats import binomtest  # noqa: E402

from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.experiment import mean_ci  # noqa: E402
from pipeline.export.stage import export  # noqa: E402
from pipeline.files import write_json  # noqa: E402
from pipeline.runs import CONFIG_FILE  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "int8_agreement.json"


def int8_figures(run_dir: Path, work: Path) -> dict:
    """Export a copy of ``run_dir`` to int8 and return its export.json figures."""
    copy = work / "models" / run_dir.parent.parent.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    cfg = load_config(copy / CONFIG_FILE)
    cfg = with_overrides(
        cfg,
        {
            "paths.models": str(copy.parent),
            "paths.reports": str(work / "reports"),
            "eval.run": copy.name,
            "export.format": "tflite-int8",
        },
    )
    figures = export(cfg).figures
    int8 = figures["variants"]["tflite-int8"]
    keras = figures["keras"]
    return {
        "run": str(run_dir),
        "test_images": figures["test_images"],
        "agreeing": round(int8["top1_agreement"] * figures["test_images"]),
        "top1_agreement": int8["top1_agreement"],
        "keras_accuracy": keras["accuracy"],
        "int8_accuracy": int8["accuracy"],
        "accuracy_change_points": 100 * (int8["accuracy"] - keras["accuracy"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    missing = [str(r) for r in args.runs if not (r / CONFIG_FILE).is_file()]
    if missing:
        sys.exit(f"not a run folder (no {CONFIG_FILE}): {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    rows = [int8_figures(run, work / str(i)) for i, run in enumerate(args.runs)]
    agreeing, photos = sum(r["agreeing"] for r in rows), sum(r["test_images"] for r in rows)
    low, high = binomtest(agreeing, photos).proportion_ci(0.95, method="wilson")
    summary = {
        "runs": len(rows),
        "mean_agreement": mean_ci([r["top1_agreement"] for r in rows]),
        "mean_accuracy_change_points": mean_ci([r["accuracy_change_points"] for r in rows]),
        "pooled": {"agreeing": agreeing, "photos": photos, "wilson95": [low, high]},
    }
    print(f"\n{'run':60s} {'photos':>6s} {'agree':>6s} {'keras':>6s} {'int8':>6s}")
    for r in rows:
        print(
            f"{r['run'][-60:]:60s} {r['test_images']:6d} {r['top1_agreement']:6.3f} "
            f"{r['keras_accuracy']:6.3f} {r['int8_accuracy']:6.3f}"
        )
    m, c = summary["mean_agreement"], summary["mean_accuracy_change_points"]
    print(
        f"mean agreement {m['mean']:.3f} ± {m['ci95']:.3f} over {len(rows)} runs; pooled "
        f"{agreeing}/{photos} = {agreeing / photos:.3f} (Wilson 95%: {low:.3f}-{high:.3f}); "
        f"accuracy change {c['mean']:+.1f} ± {c['ci95']:.1f} points"
    )
    command = " ".join([Path(sys.argv[0]).name, *map(str, sys.argv[1:])])
    write_json(args.output, {"command": command, "runs": rows, "summary": summary})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
