"""Recipes and experiment presets shipped with the package: ``pipeline/configs/*.toml`` and
``pipeline/configs/presets/*.toml``, package data found through importlib.resources, so an
installed package has them wherever it is installed and whatever the current folder.

``--config configs/transfer.toml`` names the shipped recipe from any folder: a relative
``configs/...`` path that does not exist where it is given is the package's own file.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

CONFIGS = "configs"  # the folder in the package, and the prefix --config knows it by


def configs_dir() -> Path:
    """pipeline/configs/ where the package is installed (a folder on disk: pip unpacks
    wheels, and an editable install is the checkout)."""
    return Path(os.fspath(files("pipeline") / CONFIGS))


def presets_dir() -> Path:
    """pipeline/configs/presets/: one experiment preset per file."""
    return configs_dir() / "presets"


def config_path(path: str | Path) -> Path:
    """The file ``--config`` names: the path as given when it exists, else a relative
    ``configs/<file>`` is the package's own ``pipeline/configs/<file>`` when that exists.

    >>> config_path("configs/transfer.toml") == configs_dir() / "transfer.toml"
    True
    >>> str(config_path("my_run.toml"))
    'my_run.toml'
    """
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parts[:1] != (CONFIGS,):
        return path
    shipped = configs_dir().joinpath(*path.parts[1:])
    return shipped if shipped.is_file() else path
