"""The experiment stage (`make experiment`): a grid of configurations, each run several times.

Single runs mislead: two runs of one configuration differ by about a point of accuracy.
Every cell of the grid is trained and evaluated ``experiment.repeats`` times with
different seeds on the same data split, and the summary reports mean, standard deviation
and a 95% confidence interval per configuration, saying plainly when the best one is not
distinguishable from the runner-up.

Public entries: ``run_experiment(cfg)`` and ``summarize(result_files, out_dir)``.
Resumable: results.csv is rewritten (atomically) after every run, and a run already in it
is never repeated.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, ConfigError, parse_override, with_overrides
from pipeline.data import ensure_manifests
from pipeline.files import atomic_write_text, generated_dir, read_csv, write_csv, write_json

RESULTS_FILE = "results.csv"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
METRICS = ("test_accuracy", "test_loss", "macro_f1", "train_seconds", "images_per_s")
RESULT_COLUMNS = (
    "run",
    "cell",
    "overrides",
    "seed",
    "status",
    "error",
    *METRICS,
    "parameters",
    "estimated_train_memory_bytes",
    "device",
    "tensorflow",
    "cpu_threads",
)

# Classic questions, answered on the from-scratch CNN (fast on any data set):
# (fixed overrides, grid).
PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "width": (
        {"model.backbone": "small_cnn", "train.fine_tune_epochs": 0},
        "model.cnn_width=4,8,16,32",
    ),
    "depth": (
        {"model.backbone": "small_cnn", "train.fine_tune_epochs": 0},
        "model.cnn_blocks=2,3,4,5",
    ),
    "dropout": (
        {"model.backbone": "small_cnn", "train.fine_tune_epochs": 0},
        "model.dropout=0.0,0.2,0.5",
    ),
    "epochs": (
        {"model.backbone": "small_cnn", "train.fine_tune_epochs": 0, "train.patience": 1000},
        "train.head_epochs=2,5,10",
    ),
}


@dataclass
class ExperimentResult:
    out_dir: Path
    ran: int
    skipped: int
    failed: int
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the grid


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """'model.backbone=a,b train.head_lr=1e-3' -> [('model.backbone', ['a', 'b']), ...]."""
    axes = []
    for token in text.split():
        section, key, values = parse_override(token)
        name = f"{section}.{key}"
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not options:
            raise ConfigError(f"experiment.grid: {name} has no values. Received: {token!r}")
        if any(name == existing for existing, _ in axes):
            raise ConfigError(f"experiment.grid names {name} twice; list its values once")
        axes.append((name, options))
    return axes


def expand_grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    names = [name for name, _ in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in axes))]


def cell_label(overrides: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(base configuration)"


def cell_id(overrides: dict[str, str]) -> str:
    return hashlib.sha256(cell_label(overrides).encode()).hexdigest()[:8]


def experiment_plan(cfg: Config) -> tuple[str, Config, list[dict[str, str]]]:
    """(name, base configuration, cells), validated before any training starts."""
    e = cfg.experiment
    base, grid = cfg, e.grid
    if e.preset:
        fixed, preset_grid = PRESETS[e.preset]
        base = with_overrides(cfg, fixed)
        grid = grid or preset_grid
    name = e.name or e.preset
    if not name:
        raise ConfigError('Name the experiment: make experiment NAME=my-sweep GRID="..."')
    cells = expand_grid(parse_grid(grid)) if grid else [{}]
    for cell in cells:  # every cell's configuration must be valid before hours of training
        with_overrides(base, cell)
    return name, base, cells


# ----------------------------------------------------------------------------- running


def device_label() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)}x {details.get('device_name', 'GPU')}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} threads)"


def _one_run(run_cfg: Config, num_classes_hint: int | None) -> dict[str, Any]:
    """Train and evaluate one configuration in this process; the numbers for results.csv."""
    import keras
    import tensorflow as tf

    from pipeline.evaluate import evaluate
    from pipeline.training import train

    keras.backend.clear_session()
    trained = train(run_cfg)
    evaluated = evaluate(run_cfg)
    summary, metrics = trained.summary, evaluated.metrics
    phases = summary.get("phases", {}).values()
    train_images = sum(p.get("epochs", 0) for p in phases) * summary.get("train_images", 0)
    return {
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "macro_f1": metrics["macro_f1"],
        "train_seconds": summary["seconds"],
        "images_per_s": train_images / summary["seconds"] if summary["seconds"] else 0.0,
        "parameters": summary.get("parameters", ""),
        "estimated_train_memory_bytes": _peak_training_memory(summary),
        "tensorflow": tf.__version__,
    }


def _peak_training_memory(summary: dict[str, Any]) -> Any:
    """The largest realistic training estimate over the phases a run trained, from its
    train summary: summary["memory"]["estimate"]["training"][phase]["realistic_bytes"]
    (``pipeline.training.outputs._memory_figures``); "" when the summary has no estimate."""
    from pipeline.memory import phases_run

    training = ((summary.get("memory") or {}).get("estimate") or {}).get("training") or {}
    phases = phases_run(training, summary.get("phases") or {})
    values = [f["realistic_bytes"] for f in phases.values() if f.get("realistic_bytes")]
    return int(max(values)) if values else ""


def _format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_experiment(cfg: Config) -> ExperimentResult:
    """Every cell x repeats, resumable; then the summary over every results file given."""
    name, base, cells = experiment_plan(cfg)
    out = generated_dir(Path(cfg.paths.reports) / "experiments") / name
    results_path = out / RESULTS_FILE
    rows = read_csv(results_path) if results_path.is_file() else []
    done = {
        (r["cell"], r["seed"])
        for r in rows
        if r["status"] == "ok" or not cfg.experiment.retry_failed
    }
    rows = [r for r in rows if (r["cell"], r["seed"]) in done]
    seeds = [cfg.train.seed + i for i in range(cfg.experiment.repeats)]
    plan = [(c, s) for c in cells for s in seeds]
    todo = [(c, s) for c, s in plan if (cell_id(c), str(s)) not in done]
    print(
        f"Experiment {name}: {len(cells)} cell(s) x {len(seeds)} seed(s) = {len(plan)} runs; "
        f"{len(plan) - len(todo)} already done, {len(todo)} to run. Results: {results_path}"
    )
    ensure_manifests(base)  # one split for every run, made once up front
    device = device_label()
    started, ran, failed = time.perf_counter(), 0, 0
    for index, (cell, seed) in enumerate(todo, start=1):
        run_name = f"{name}-{cell_id(cell)}-s{seed}"
        run_cfg = with_overrides(
            base,
            {
                **cell,
                "train.seed": seed,
                "train.run_name": run_name,
                "eval.run": run_name,
                "paths.reports": str(out / "runs"),
            },
        )
        print(f"[{index}/{len(todo)}] {cell_label(cell)} seed {seed}", flush=True)
        row = {
            "run": run_name,
            "cell": cell_id(cell),
            "overrides": cell_label(cell),
            "seed": seed,
            "device": device,
            "cpu_threads": os.cpu_count(),
        }
        try:
            row.update(_one_run(run_cfg, None), status="ok", error="")
        except Exception as exc:  # recorded, and the other runs go on
            failed += 1
            message = " ".join(str(exc).split())[:300]
            row.update(status="failed", error=f"{type(exc).__name__}: {message}")
            print(f"    run failed: {row['error']}")
        ran += 1
        rows.append({k: row.get(k, "") for k in RESULT_COLUMNS})
        write_csv(
            results_path, RESULT_COLUMNS, ([r.get(k, "") for k in RESULT_COLUMNS] for r in rows)
        )
        elapsed = time.perf_counter() - started
        eta = elapsed / index * (len(todo) - index)
        print(
            f"    {row['status']}; {_format_eta(elapsed)} so far, about {_format_eta(eta)} left",
            flush=True,
        )
    extra = [Path(p.strip()) for p in cfg.experiment.results.split(",") if p.strip()]
    summary = summarize([results_path, *extra], out, cfg.experiment)
    return ExperimentResult(out, ran, len(plan) - len(todo), failed, summary)


# ----------------------------------------------------------------------------- summary


def mean_ci(values: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and the half-width of a t confidence interval."""
    from scipy import stats

    array = np.asarray(values, dtype=float)
    n = len(array)
    mean = float(array.mean()) if n else math.nan
    std = float(array.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "ci95": half}


def within_noise(a: list[float], b: list[float]) -> tuple[bool, float]:
    """Welch's t-test: is the difference between two sets of runs indistinguishable?"""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return True, math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return bool(np.mean(a) == np.mean(b)), 0.0 if np.mean(a) != np.mean(b) else 1.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p >= 0.05, p


def summarize(result_files: list[Path], out: Path, settings=None) -> dict[str, Any]:
    """summary.md, summary.json and the plots, grouped by device and configuration."""
    rows = [r for path in result_files if path.is_file() for r in read_csv(path)]
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["overrides"])].append(r)
    configs = []
    for (device, overrides), members in groups.items():
        ok = [m for m in members if m["status"] == "ok"]
        stats_ = {m: mean_ci([float(r[m]) for r in ok]) for m in METRICS}
        configs.append(
            {
                "device": device,
                "overrides": overrides,
                "runs": len(members),
                "failed": len(members) - len(ok),
                "errors": sorted({m["error"] for m in members if m["status"] != "ok"}),
                "metrics": stats_,
                "test_accuracy_values": [float(r["test_accuracy"]) for r in ok],
            }
        )
    by_device: dict[str, list[dict]] = defaultdict(list)
    for c in configs:
        by_device[c["device"]].append(c)
    verdicts = {device: _verdict(members) for device, members in by_device.items()}
    summary = {
        "results": [str(p) for p in result_files],
        "configurations": configs,
        "verdicts": verdicts,
    }
    summary["across_devices"] = _across_devices(configs)
    if settings is not None and settings.preset in ("width", "depth") and settings.threshold:
        summary["smallest_above_threshold"] = _smallest_above(configs, settings.threshold)
    write_json(out / SUMMARY_JSON, summary)
    atomic_write_text(out / SUMMARY_MD, _summary_markdown(summary))
    _plot(configs, out)
    print(f"Summary: {out / SUMMARY_MD}")
    return summary


def _across_devices(configs: list[dict]) -> list[dict[str, Any]]:
    """Configurations run on several machines: time relative to the slowest, and accuracy."""
    by_config: dict[str, list[dict]] = defaultdict(list)
    for c in configs:
        if c["metrics"]["train_seconds"]["n"]:
            by_config[c["overrides"]].append(c)
    rows = []
    for overrides, members in by_config.items():
        if len({m["device"] for m in members}) < 2:
            continue
        slowest = max(m["metrics"]["train_seconds"]["mean"] for m in members)
        for m in sorted(members, key=lambda m: m["metrics"]["train_seconds"]["mean"]):
            seconds = m["metrics"]["train_seconds"]["mean"]
            rows.append(
                {
                    "overrides": overrides,
                    "device": m["device"],
                    "train_seconds": seconds,
                    "speedup_vs_slowest": slowest / seconds if seconds else math.nan,
                    "test_accuracy": m["metrics"]["test_accuracy"]["mean"],
                }
            )
    return rows


def _verdict(members: list[dict]) -> dict[str, Any]:
    ranked = sorted(
        (m for m in members if m["metrics"]["test_accuracy"]["n"]),
        key=lambda m: -m["metrics"]["test_accuracy"]["mean"],
    )
    if not ranked:
        return {"best": None, "sentence": "No run finished."}
    best = ranked[0]
    verdict = {"best": best["overrides"], "runner_up": None, "p_value": None}
    if len(ranked) == 1:
        verdict["sentence"] = f"Only one configuration finished: {best['overrides']}."
        return verdict
    second = ranked[1]
    noise, p = within_noise(best["test_accuracy_values"], second["test_accuracy_values"])
    diff = best["metrics"]["test_accuracy"]["mean"] - second["metrics"]["test_accuracy"]["mean"]
    verdict.update(runner_up=second["overrides"], p_value=p, within_noise=noise)
    if noise:
        verdict["sentence"] = (
            f"The best configuration ({best['overrides']}) beats the runner-up "
            f"({second['overrides']}) by {100 * diff:.1f} points of test accuracy, which is "
            f"within the noise of these runs (Welch's t-test p = {p:.2f}): run more repeats "
            "before preferring one."
        )
    else:
        verdict["sentence"] = (
            f"The best configuration ({best['overrides']}) beats the runner-up "
            f"({second['overrides']}) by {100 * diff:.1f} points of test accuracy "
            f"(Welch's t-test p = {p:.3f})."
        )
    return verdict


def _smallest_above(configs: list[dict], threshold: float) -> dict[str, Any]:
    """The first configuration in grid order (smallest first) whose mean clears threshold."""
    for c in configs:
        if (
            c["metrics"]["test_accuracy"]["n"]
            and c["metrics"]["test_accuracy"]["mean"] >= threshold
        ):
            return {
                "overrides": c["overrides"],
                "threshold": threshold,
                "mean": c["metrics"]["test_accuracy"]["mean"],
            }
    return {"overrides": None, "threshold": threshold}


def _fmt(s: dict[str, float], scale: float = 1.0, digits: int = 4) -> str:
    if not s["n"]:
        return "n/a"
    return (
        f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f} "
        f"[±{s['ci95'] * scale:.{digits}f}]"
    )


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Experiment summary",
        "",
        "Each cell: mean ± sample standard deviation [half-width of the 95% confidence "
        "interval] over its successful runs.",
        "",
    ]
    for device, verdict in summary["verdicts"].items():
        lines += [
            f"## {device}",
            "",
            "| configuration | runs | failed | test accuracy | test loss | macro F1 | "
            "training s | images/s |",
            "|---|---:|---:|---|---|---|---|---|",
        ]
        for c in (c for c in summary["configurations"] if c["device"] == device):
            mark = " **(best)**" if c["overrides"] == verdict.get("best") else ""
            m = c["metrics"]
            lines.append(
                f"| {c['overrides']}{mark} | {c['runs']} | {c['failed']} | "
                f"{_fmt(m['test_accuracy'])} | {_fmt(m['test_loss'])} | {_fmt(m['macro_f1'])} | "
                f"{_fmt(m['train_seconds'], digits=1)} | {_fmt(m['images_per_s'], digits=1)} |"
            )
        lines += ["", verdict["sentence"], ""]
        for c in (c for c in summary["configurations"] if c["device"] == device and c["errors"]):
            lines.append(f"- failed runs of {c['overrides']}: {'; '.join(c['errors'])}")
        lines.append("")
    if summary.get("across_devices"):
        lines += [
            "## Across devices",
            "",
            "| configuration | device | training s | speed-up vs slowest | test accuracy |",
            "|---|---|---:|---:|---:|",
        ]
        for r in summary["across_devices"]:
            lines.append(
                f"| {r['overrides']} | {r['device']} | {r['train_seconds']:.1f} | "
                f"{r['speedup_vs_slowest']:.2f}x | {r['test_accuracy']:.4f} |"
            )
        lines.append("")
    if "smallest_above_threshold" in summary:
        s = summary["smallest_above_threshold"]
        lines.append(
            f"Smallest configuration with mean test accuracy >= {s['threshold']}: "
            f"{s['overrides'] or 'none'}.\n"
        )
    return "\n".join(lines)


def _plot(configs: list[dict], out: Path) -> None:
    from pipeline.plots import _pyplot, save_figure

    plt = _pyplot()
    finished = [c for c in configs if c["metrics"]["test_accuracy"]["n"]]
    if not finished:
        return
    devices = sorted({c["device"] for c in finished})
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for marker, device in zip("osD^v<>", devices):
        for c in (c for c in finished if c["device"] == device):
            acc, secs = c["metrics"]["test_accuracy"], c["metrics"]["train_seconds"]
            ax.errorbar(
                secs["mean"],
                acc["mean"],
                xerr=secs["ci95"],
                yerr=acc["ci95"],
                fmt=marker,
                capsize=3,
                label=f"{c['overrides']} ({device})"[:70],
            )
    ax.set(
        xlabel="training time (s)",
        ylabel="test accuracy",
        title="Accuracy against training time (95% confidence intervals)",
    )
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, out / "accuracy_vs_time.png")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(finished) + 2), 4.5))
    for i, c in enumerate(finished):
        values = c["test_accuracy_values"]
        ax.scatter(np.full(len(values), i), values, alpha=0.7)
        ax.errorbar(
            i + 0.15,
            c["metrics"]["test_accuracy"]["mean"],
            yerr=c["metrics"]["test_accuracy"]["ci95"],
            fmt="_",
            color="black",
            capsize=4,
        )
    ax.set_xticks(
        range(len(finished)),
        [c["overrides"][:40] for c in finished],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set(ylabel="test accuracy", title="Spread of the runs of each configuration")
    save_figure(fig, out / "spread.png")
