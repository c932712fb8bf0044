"""The summary of an experiment: summary.md, summary.json and two plots from results.csv.

Runs are grouped by device and configuration; any number of results.csv files (other
machines, earlier sweeps) can be summarised together.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.experiment.presets import load_preset
from pipeline.experiment.results import METRICS, RunRow, read_results
from pipeline.experiment.stats import (
    ConfigSummary,
    across_devices,
    mean_ci,
    smallest_above,
    verdict,
)
from pipeline.files import atomic_write_text, write_json

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"


def summarize(result_files: list[Path], out: Path, settings=None) -> dict[str, Any]:
    """summary.md, summary.json and the plots, grouped by device and configuration.

    ``settings`` is the experiment section (``cfg.experiment``): with a preset whose grid
    runs smallest first and experiment.threshold, the smallest configuration above it."""
    rows = [r for path in result_files if path.is_file() for r in read_results(path)]
    groups: dict[tuple[str, str], list[RunRow]] = defaultdict(list)
    for r in rows:
        groups[(r.device, r.overrides)].append(r)
    configs = []
    for (device, overrides), members in groups.items():
        ok = [m for m in members if m.ok]
        stats_ = {m: mean_ci(_values(ok, m)) for m in METRICS}
        configs.append(
            ConfigSummary(
                device=device,
                overrides=overrides,
                runs=len(members),
                failed=len(members) - len(ok),
                errors=sorted({m.error for m in members if not m.ok}),
                metrics=stats_,
                test_accuracy_values=[r.metric("test_accuracy") for r in ok],
            )
        )
    by_device: dict[str, list[ConfigSummary]] = defaultdict(list)
    for c in configs:
        by_device[c.device].append(c)
    summary = {
        "results": [str(p) for p in result_files],
        "configurations": [c.to_json() for c in configs],
        "verdicts": {device: verdict(members) for device, members in by_device.items()},
    }
    summary["across_devices"] = across_devices(configs)
    if (
        settings is not None
        and settings.preset
        and settings.threshold
        and load_preset(settings.preset).smallest_first
    ):
        summary["smallest_above_threshold"] = smallest_above(configs, settings.threshold)
    write_json(out / SUMMARY_JSON, summary)
    atomic_write_text(out / SUMMARY_MD, _summary_markdown(summary, configs))
    _plot(configs, out)
    print(f"Summary: {out / SUMMARY_MD}")
    return summary


def _values(rows: list[RunRow], metric: str) -> list[float]:
    """The metric's values, leaving out runs without one (no baseline from scratch; results
    files written before the column existed)."""
    values = (r.metric(metric) for r in rows)
    return [v for v in values if not math.isnan(v)]


def _fmt(s: dict[str, float], scale: float = 1.0, digits: int = 4) -> str:
    if not s["n"]:
        return "n/a"
    return (
        f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f} "
        f"[±{s['ci95'] * scale:.{digits}f}]"
    )


def _summary_markdown(summary: dict[str, Any], configs: list[ConfigSummary]) -> str:
    lines = [
        "# Experiment summary",
        "",
        "Each cell: mean ± sample standard deviation [half-width of the 95% confidence "
        "interval] over its successful runs.",
        "",
    ]
    for device, verdict_ in summary["verdicts"].items():
        lines += [
            f"## {device}",
            "",
            "| configuration | runs | failed | test accuracy | frozen-feature baseline | "
            "over the baseline (points) | test loss | macro F1 | training s | images/s |",
            "|---|---:|---:|---|---|---|---|---|---|---|",
        ]
        for c in (c for c in configs if c.device == device):
            mark = " **(best)**" if c.overrides == verdict_.get("best") else ""
            m = c.metrics
            lines.append(
                f"| {c.overrides}{mark} | {c.runs} | {c.failed} | "
                f"{_fmt(m['test_accuracy'])} | {_fmt(m['baseline_accuracy'])} | "
                f"{_fmt(m['over_baseline'], scale=100, digits=1)} | "
                f"{_fmt(m['test_loss'])} | {_fmt(m['macro_f1'])} | "
                f"{_fmt(m['train_seconds'], digits=1)} | {_fmt(m['images_per_s'], digits=1)} |"
            )
        lines += ["", verdict_["sentence"], ""]
        for c in (c for c in configs if c.device == device and c.errors):
            lines.append(f"- failed runs of {c.overrides}: {'; '.join(c.errors)}")
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


def _plot(configs: list[ConfigSummary], out: Path) -> None:
    """accuracy_vs_time.png (mean and 95% intervals) and spread.png (every run)."""
    from pipeline.plots import _pyplot, save_figure

    plt = _pyplot()
    finished = [c for c in configs if c.finished()]
    if not finished:
        return
    devices = sorted({c.device for c in finished})
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for marker, device in zip("osD^v<>", devices):
        for c in (c for c in finished if c.device == device):
            acc, secs = c.metrics["test_accuracy"], c.metrics["train_seconds"]
            ax.errorbar(
                secs["mean"],
                acc["mean"],
                xerr=secs["ci95"],
                yerr=acc["ci95"],
                fmt=marker,
                capsize=3,
                label=f"{c.overrides} ({device})"[:70],
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
        values = c.test_accuracy_values
        ax.scatter(np.full(len(values), i), values, alpha=0.7)
        ax.errorbar(
            i + 0.15,
            c.mean("test_accuracy"),
            yerr=c.metrics["test_accuracy"]["ci95"],
            fmt="_",
            color="black",
            capsize=4,
        )
    ax.set_xticks(
        range(len(finished)),
        [c.overrides[:40] for c in finished],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set(ylabel="test accuracy", title="Spread of the runs of each configuration")
    save_figure(fig, out / "spread.png")
