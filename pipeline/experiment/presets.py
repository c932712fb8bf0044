"""Experiment presets: named sweeps stored as data, one file each in pipeline/configs/presets/
(package data: ``pipeline.recipes.presets_dir``).

A preset file has the sections of a config file (``pipeline config`` lists them) plus a
``[preset]`` table:

- ``about``: one line saying what the sweep asks;
- ``grid``: the sweep, used when experiment.grid is empty (``GRID=`` replaces it);
- ``smallest_first``: the grid lists the smallest model first, so experiment.threshold
  names the first configuration whose mean test accuracy clears it.

Every other value is fixed for each run of the preset, over the command line's values.
A new preset is a new file; nothing else needs to know its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, with_overrides
from pipeline.recipes import presets_dir, read_config_file

PRESETS_DIR = presets_dir()  # in the installed package, wherever the current folder is
PRESET_KEYS = ("about", "grid", "smallest_first")


@dataclass(frozen=True)
class Preset:
    name: str
    grid: str
    fixed: dict[str, Any] = field(default_factory=dict)  # {'section.key': value}
    about: str = ""
    smallest_first: bool = False


def preset_names(folder: Path = PRESETS_DIR) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.toml"))


def load_preset(name: str, folder: Path = PRESETS_DIR) -> Preset:
    """presets/<name>.toml, read and checked; an unknown name lists the known ones."""
    path = folder / f"{name}.toml"
    if not name or Path(name).name != name or not path.is_file():
        raise ConfigError(
            f"experiment.preset must be one of {', '.join(preset_names(folder)) or '(none)'} "
            f"(the files in {folder}). Received: {name!r}"
        )
    sections = read_config_file(path)
    meta = sections.pop("preset", {})
    unknown = sorted(set(meta) - set(PRESET_KEYS))
    if unknown or not isinstance(meta.get("grid", ""), str):
        raise ConfigError(
            f"Preset file {path}: [preset] takes {', '.join(PRESET_KEYS)} (grid a string). "
            f"Received: {', '.join(unknown) or repr(meta.get('grid'))}"
        )
    fixed = {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()}
    return Preset(
        name=name,
        grid=meta.get("grid", ""),
        fixed=fixed,
        about=str(meta.get("about", "")),
        smallest_first=bool(meta.get("smallest_first", False)),
    )


def apply_preset(cfg: Config) -> tuple[Config, str]:
    """(base configuration, grid): experiment.preset's fixed values over cfg, and its grid
    unless experiment.grid names one. Without a preset: cfg and experiment.grid."""
    if not cfg.experiment.preset:
        return cfg, cfg.experiment.grid
    preset = load_preset(cfg.experiment.preset)
    return with_overrides(cfg, preset.fixed), cfg.experiment.grid or preset.grid


def with_preset(cfg: Config) -> Config:
    """cfg with its preset's fixed values: what the experiment stage validates and runs."""
    return apply_preset(cfg)[0]
