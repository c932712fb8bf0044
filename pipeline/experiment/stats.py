"""The statistics of a summary: mean and confidence interval, Welch's test, the verdicts.

Every function here takes plain numbers or the per-configuration dictionaries that
``pipeline.experiment.summary`` builds ({"overrides", "device", "metrics", ...}).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np


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


def verdict(members: list[dict]) -> dict[str, Any]:
    """The best configuration of one device, and whether it beats the runner-up beyond noise."""
    ranked = sorted(
        (m for m in members if m["metrics"]["test_accuracy"]["n"]),
        key=lambda m: -m["metrics"]["test_accuracy"]["mean"],
    )
    if not ranked:
        return {"best": None, "sentence": "No run finished."}
    best = ranked[0]
    result = {"best": best["overrides"], "runner_up": None, "p_value": None}
    if len(ranked) == 1:
        result["sentence"] = f"Only one configuration finished: {best['overrides']}."
        return result
    second = ranked[1]
    noise, p = within_noise(best["test_accuracy_values"], second["test_accuracy_values"])
    diff = best["metrics"]["test_accuracy"]["mean"] - second["metrics"]["test_accuracy"]["mean"]
    result.update(runner_up=second["overrides"], p_value=p, within_noise=noise)
    if noise:
        result["sentence"] = (
            f"The best configuration ({best['overrides']}) beats the runner-up "
            f"({second['overrides']}) by {100 * diff:.1f} points of test accuracy, which is "
            f"within the noise of these runs (Welch's t-test p = {p:.2f}): run more repeats "
            "before preferring one."
        )
    else:
        result["sentence"] = (
            f"The best configuration ({best['overrides']}) beats the runner-up "
            f"({second['overrides']}) by {100 * diff:.1f} points of test accuracy "
            f"(Welch's t-test p = {p:.3f})."
        )
    return result


def across_devices(configs: list[dict]) -> list[dict[str, Any]]:
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


def smallest_above(configs: list[dict], threshold: float) -> dict[str, Any]:
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
