"""How long a run takes on a CPU, said before it starts: from images/s measured per backbone
on a reference machine (``benchmarks/cpu_rates.py`` writes ``pipeline/configs/cpu_rates.json``),
scaled by this machine's cores and the image size. Rough by design: its job is to warn before
an hour-long run and to name a faster backbone, not to time it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline.recipes import configs_dir

RATES_FILE = "configs/cpu_rates.json"
FAST_BACKBONE = "efficientnet_lite0"
LONG_RUN_SECONDS = 20 * 60  # a forecast above this names the fast backbone


@dataclass(frozen=True)
class CpuRates:
    """One backbone's measured images/s at its ImageNet size on the reference machine."""

    size: int
    features_per_s: float  # phase 1's one pass of the frozen base (the feature cache)
    phase2_per_s: float  # phase 2's training step


def load_rates() -> tuple[int, dict[str, CpuRates]]:
    """(the reference machine's cores, rates by backbone); (0, {}) when none were measured."""
    path = configs_dir() / "cpu_rates.json"
    if not path.is_file():
        return 0, {}
    data = json.loads(path.read_text(encoding="utf-8"))
    rates = {
        name: CpuRates(r["size"], r["features_per_s"], r["phase2_per_s"])
        for name, r in data["backbones"].items()
    }
    return int(data["cores"]), rates


def forecast_seconds(
    rates: CpuRates,
    reference_cores: int,
    cores: int,
    size: int,
    images: int,
    train: int,
    val: int,
    epochs: int,
) -> float:
    """One feature pass over every image, then ``epochs`` of phase 2, each a pass over the
    training images and one over the validation images (an upper bound: early stopping may
    end phase 2 sooner), at ``size``, on ``cores``.

    >>> rates = CpuRates(224, features_per_s=40.0, phase2_per_s=10.0)
    >>> forecast_seconds(rates, 2, 2, 224, images=400, train=280, val=60, epochs=10)
    305.0
    >>> forecast_seconds(rates, 2, 4, 224, images=400, train=280, val=60, epochs=10)
    152.5
    """
    pixels = (size / rates.size) ** 2
    feature_pass = images / rates.features_per_s
    epoch = train / rates.phase2_per_s + val / rates.features_per_s
    seconds = feature_pass + epochs * epoch
    return seconds * pixels * reference_cores / max(cores, 1)


def forecast_lines(
    backbone: str,
    size: int,
    images: int,
    train: int,
    val: int,
    epochs: int | None,
    cores: int | None = None,
) -> list[str]:
    """What `make train` prints on a CPU before it starts; [] without a measured rate.
    ``epochs``: train.fine_tune_epochs as set, or None for each backbone's own (the fast
    backbone's alternative is then timed at its own recipe's epochs)."""
    from pipeline.config import phase2_epochs

    reference_cores, table = load_rates()
    if backbone not in table:
        return []
    cores = cores or os.cpu_count() or 1

    def minutes(name: str, at: int) -> float:
        n = phase2_epochs(epochs, name)
        return forecast_seconds(table[name], reference_cores, cores, at, images, train, val, n) / 60

    expected = minutes(backbone, size)
    lines = [
        f"On this CPU ({cores} cores, no GPU) this run should take up to about "
        f"{_duration(expected)} (rates measured on {reference_cores} cores: "
        f"benchmarks/cpu_rates.py)."
    ]
    fast = table.get(FAST_BACKBONE)
    if expected * 60 > LONG_RUN_SECONDS and fast is not None and backbone != FAST_BACKBONE:
        lines.append(
            f"For a faster run: BACKBONE={FAST_BACKBONE} (ImageNet weights from the package "
            f"registry, {fast.size} px), about {_duration(minutes(FAST_BACKBONE, fast.size))}."
        )
    return lines


def _duration(minutes: float) -> str:
    """'under a minute', '24 min' or '1 h 51 min'.

    >>> _duration(0.4), _duration(24.2), _duration(111)
    ('under a minute', '24 min', '1 h 51 min')
    """
    if minutes < 1:
        return "under a minute"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest} min" if hours else f"{rest} min"
