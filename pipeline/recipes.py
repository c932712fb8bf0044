"""Config files: the recipes and experiment presets shipped with the package
(``pipeline/configs/*.toml`` and ``pipeline/configs/presets/*.toml``, package data found
through importlib.resources, so an installed package has them wherever it is installed and
whatever the current folder), and reading any TOML, YAML or JSON config file.

``--config configs/transfer.toml`` names the shipped recipe from any folder: a relative
``configs/...`` path that does not exist where it is given is the package's own file.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from pipeline.validation import ConfigError

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


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; give a .toml/.yaml/.json file")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; give an existing .toml/.yaml/.json")
    suffix = path.suffix.lower()
    kinds = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
    if suffix not in kinds:
        raise ConfigError(f"Config file {path}: expected .toml, .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    import yaml

    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"Config file {path} is not valid {kinds[suffix]} ({_parse_error(exc)}); fix the syntax"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(
            f"Config file {path}: expected sections of key = value, e.g. [train] head_lr = 1e-3"
        )
    return data


def _parse_error(exc: Exception) -> str:
    """A parser's complaint in one line, with the line (and column) when the parser knows it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None)  # yaml.MarkedYAMLError
    if mark is not None:
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "syntax error"
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    # tomllib says "<what> (at line L, column C)" itself.
    return " ".join(str(exc).split()) or type(exc).__name__
