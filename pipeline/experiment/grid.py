"""The plan of an experiment: experiment.grid parsed and expanded into cells, each named."""

from __future__ import annotations

import hashlib
import itertools

from pipeline.config import Config, ConfigError, parse_override, with_overrides
from pipeline.experiment.presets import apply_preset


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """'model.backbone=a,b train.head_lr=1e-3' -> [('model.backbone', ['a', 'b']), ...]."""
    axes = []
    for token in text.split():
        section, key, values = parse_override(token)
        name = f"{section}.{key}"
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not options:
            raise ConfigError(f"experiment.grid: {name} has no values. Received: {token!r}")
        repeated = sorted({v for v in options if options.count(v) > 1})
        if repeated:
            raise ConfigError(
                f"experiment.grid: {name} lists {', '.join(repeated)} more than once; list each "
                f"value once (experiment.repeats runs each cell several times)"
            )
        if any(name == existing for existing, _ in axes):
            raise ConfigError(f"experiment.grid names {name} twice; list its values once")
        axes.append((name, options))
    return axes


def expand_grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the axes' values, in grid order (the last axis varies fastest)."""
    names = [name for name, _ in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in axes))]


def cell_label(overrides: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(base configuration)"


def cell_id(overrides: dict[str, str]) -> str:
    """A short stable name for a cell: run names and results.csv's ``cell`` column."""
    return hashlib.sha256(cell_label(overrides).encode()).hexdigest()[:8]


def experiment_plan(cfg: Config) -> tuple[str, Config, list[dict[str, str]]]:
    """(name, base configuration, cells), validated before any training starts."""
    base, grid = apply_preset(cfg)
    name = cfg.experiment.name or cfg.experiment.preset
    if not name:
        raise ConfigError('Name the experiment: make experiment NAME=my-sweep GRID="..."')
    cells = expand_grid(parse_grid(grid)) if grid else [{}]
    for cell in cells:  # every cell's configuration must be valid before hours of training
        with_overrides(base, cell)
    return name, base, cells
