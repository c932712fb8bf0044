"""The statistics of a summary: mean and confidence interval, Welch's test, the verdicts.

Every function here takes plain numbers or the per-configuration summaries
(``ConfigSummary``) that ``pipeline.experiment.summary`` builds from the runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ConfigSummary:
    """The runs of one configuration on one device; summary.json's ``configurations``
    entry, its fields the JSON keys."""

    device: str
    overrides: str
    runs: int
    failed: int
    errors: list[str]
    metrics: dict[str, dict[str, float]]  # metric -> mean_ci of its successful runs
    test_accuracy_values: list[float]

    def mean(self, metric: str) -> float:
        return self.metrics[metric]["mean"]

    def finished(self, metric: str = "test_accuracy") -> bool:
        """Whether any successful run gave the metric."""
        return bool(self.metrics[metric]["n"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


def verdict(members: list[ConfigSummary]) -> dict[str, Any]:
    """The best configuration of one device, and whether it beats the runner-up beyond noise."""
    ranked = sorted((m for m in members if m.finished()), key=lambda m: -m.mean("test_accuracy"))
    if not ranked:
        return {"best": None, "sentence": "No run finished."}
    best = ranked[0]
    result = {"best": best.overrides, "runner_up": None, "p_value": None}
    if len(ranked) == 1:
        result["sentence"] = f"Only one configuration finished: {best.overrides}."
        return result
    second = ranked[1]
    noise, p = within_noise(best.test_accuracy_values, second.test_accuracy_values)
    diff = best.mean("test_accuracy") - second.mean("test_accuracy")
    result.update(runner_up=second.overrides, p_value=p, within_noise=noise)
    if noise:
        result["sentence"] = (
            f"The best configuration ({best.overrides}) beats the runner-up "
            f"({second.overrides}) by {100 * diff:.1f} points of test accuracy, which is "
            f"within the noise of these runs (Welch's t-test p = {p:.2f}): run more repeats "
            "before preferring one."
        )
    else:
        result["sentence"] = (
            f"The best configuration ({best.overrides}) beats the runner-up "
            f"({second.overrides}) by {100 * diff:.1f} points of test accuracy "
            f"(Welch's t-test p = {p:.3f})."
        )
    return result


def across_devices(configs: list[ConfigSummary]) -> list[dict[str, Any]]:
    """Configurations run on several machines: time relative to the slowest, and accuracy."""
    by_config: dict[str, list[ConfigSummary]] = defaultdict(list)
    for c in configs:
        if c.finished("train_seconds"):
            by_config[c.overrides].append(c)
    rows = []
    for overrides, members in by_config.items():
        if len({m.device for m in members}) < 2:
            continue
        slowest = max(m.mean("train_seconds") for m in members)
        for m in sorted(members, key=lambda m: m.mean("train_seconds")):
            seconds = m.mean("train_seconds")
            rows.append(
                {
                    "overrides": overrides,
                    "device": m.device,
                    "train_seconds": seconds,
                    "speedup_vs_slowest": slowest / seconds if seconds else math.nan,
                    "test_accuracy": m.mean("test_accuracy"),
                }
            )
    return rows


def smallest_above(configs: list[ConfigSummary], threshold: float) -> dict[str, Any]:
    """The first configuration in grid order (smallest first) whose mean clears threshold."""
    for c in configs:
        if c.finished() and c.mean("test_accuracy") >= threshold:
            return {
                "overrides": c.overrides,
                "threshold": threshold,
                "mean": c.mean("test_accuracy"),
            }
    return {"overrides": None, "threshold": threshold}
