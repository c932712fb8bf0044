"""results.csv: one ``RunRow`` per run of an experiment, written and read here only.

The runner appends a row after every run and the summary reads any number of these files
(other machines, earlier sweeps), so the columns and their text stay as they are: a figure
a run did not give (a failed run, a network without a baseline in a file from before that
column) is an empty cell, a baseline a from-scratch network cannot have is "nan".

>>> row = RunRow("r", "c", "a=1", 42, "ok", test_accuracy=0.5, baseline_accuracy=math.nan)
>>> cells = dict(zip(RESULT_COLUMNS, row.cells()))
>>> cells["test_accuracy"], cells["test_loss"], cells["seed"]
(0.5, None, 42)
>>> text = {name: "" if value is None else str(value) for name, value in cells.items()}
>>> back = RunRow.from_cells(text)
>>> back.test_accuracy, back.test_loss, back.seed, math.isnan(back.baseline_accuracy)
(0.5, None, 42, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.files import read_csv, write_csv

RESULTS_FILE = "results.csv"
METRICS = (
    "test_accuracy",
    "test_loss",
    "macro_f1",
    "baseline_accuracy",  # the run's frozen-feature logistic regression, same test photos
    "over_baseline",  # test_accuracy - baseline_accuracy
    "train_seconds",
    "images_per_s",
)


@dataclass(frozen=True)
class RunRow:
    """One run of one cell: what it was, whether it finished, and its figures (None where
    it gave none). The fields are results.csv's columns, in order."""

    run: str
    cell: str
    overrides: str
    seed: int
    status: str  # "ok" or "failed"
    error: str = ""
    test_accuracy: float | None = None
    test_loss: float | None = None
    macro_f1: float | None = None
    baseline_accuracy: float | None = None  # nan for a network trained from scratch
    over_baseline: float | None = None
    train_seconds: float | None = None
    images_per_s: float | None = None
    parameters: int | None = None
    estimated_train_memory_bytes: int | None = None
    device: str = ""
    tensorflow: str = ""
    cpu_threads: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str) -> float:
        """One of METRICS; nan where the run gave none, so that statistics leave it out."""
        value = getattr(self, name)
        return math.nan if value is None else value

    def cells(self) -> list[float | int | str | None]:
        """The row for results.csv (None writes an empty cell)."""
        return [getattr(self, name) for name in RESULT_COLUMNS]

    @classmethod
    def from_cells(cls, cells: Mapping[str, str]) -> RunRow:
        """A row of results.csv; a column the file lacks reads as empty."""
        values = {}
        for f in fields(cls):
            text = cells.get(f.name) or ""
            kind = _KINDS[f.name]
            values[f.name] = text if kind is str else (kind(text) if text else None)
        return cls(**values)


RESULT_COLUMNS = tuple(f.name for f in fields(RunRow))
_KINDS: dict[str, type] = {
    **{name: str for name in RESULT_COLUMNS},
    **{name: float for name in METRICS},
    **{name: int for name in ("seed", "parameters", "estimated_train_memory_bytes")},
    "cpu_threads": int,
}


def write_results(path: Path, rows: Iterable[RunRow]) -> Path:
    """results.csv, written whole (atomically) after every run."""
    return write_csv(path, RESULT_COLUMNS, (row.cells() for row in rows))


def read_results(path: Path) -> list[RunRow]:
    return [RunRow.from_cells(cells) for cells in read_csv(path)]
