"""Helpers several test modules share (not a test module: test files import this one, never
each other, and never conftest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
CONFIGS = REPO / "configs"


# ----------------------------------------------------------------------------- tiny data


@dataclass
class TinyData:
    root: Path
    overrides: list[str]

    def cfg(self, *extra: str):
        from pipeline.config import load_config

        return load_config(None, [*self.overrides, *extra])


def make_tiny_data(flowers_mini: Path, root: Path, per_class: int = 16) -> TinyData:
    """A flowers-mini subset (symlinks) through the real data stage: 16 photos per class
    give 58 train, 8 val and 14 test images. Random weights, batches of 8."""
    from pipeline.config import load_config
    from pipeline.data import prepare_data

    folder = root / "flowers-tiny"
    for class_dir in sorted(p for p in flowers_mini.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (folder / class_dir.name / image.name).symlink_to(image)
    overrides = [
        f"data.dataset=folder:{folder}",
        f"paths.data={root / 'data'}",
        f"paths.models={root / 'models'}",
        f"paths.reports={root / 'reports'}",
        "model.weights=none",
        "input.batch_size=8",
    ]
    prepare_data(load_config(None, overrides), progress=False)
    return TinyData(root, overrides)


# ----------------------------------------------------------------------------- make

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make_variables() -> set[str]:
    """The Make variables that become overrides, read from the Makefile: unset in the tests'
    environment, so that a NAME or RUN the caller happens to export cannot leak in."""
    import re

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return {*re.findall(r"\$\(call override,(\w+),", makefile), "ARGS", "CONFIG", "MEMORY_ARGS"}


MAKE_VARIABLES = _make_variables()


def run_make(*args: str, venv: Path | None = None, python: str | None = None):
    """`make -C <repo> ARGS...` with this interpreter's environment as VENV; never installs.

    VENV is this interpreter's prefix (the repository's .venv under `make test`), and `-o`
    tells make the install stamp is up to date, so a test never starts pip.
    """
    venv = Path(sys.prefix) if venv is None else venv
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # under `make test`
        env.pop(k, None)
    cmd = ["make", "-s", "--no-print-directory", "-C", str(REPO), "ACCEL=cpu", f"VENV={venv}"]
    cmd += ["-o", f"{venv}/.installed-cpu"]
    if python is not None:
        cmd.append(f"PYTHON={python}")
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, encoding="utf-8", env=env, timeout=120
    )
