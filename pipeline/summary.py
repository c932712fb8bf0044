"""What a finished train stage reports: summary.json and state.json as typed records.

Phases are numbered 1 and 2 in code and keyed "1" and "2" in the JSON. Each record is
written and read by one function here (``write_summary``/``read_summary``,
``write_state``/``read_state``), so the train stage, evaluate, the experiments and the
benchmarks read the same fields. Light to import (no TensorFlow).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.files import read_json, write_json
from pipeline.memory.record import RunMemory
from pipeline.runs import STATE_FILE, SUMMARY_FILE

_T = TypeVar("_T")


# ----------------------------------------------------------------------------- phases

# Phases are numbered 1 and 2 in code; state.json and summary.json key them "1" and "2".


def _phase_keys(phases: Mapping[int, PhaseResult], history: bool) -> dict[str, Any]:
    return {str(number): p.to_json(history) for number, p in phases.items()}


def _phase_numbers(data: Mapping[str, Any] | None) -> dict[int, PhaseResult]:
    return {int(key): PhaseResult.from_json(p) for key, p in (data or {}).items()}


@dataclass(frozen=True)
class SplitScores:
    """A head's figures on one labelled split (the baseline's ``val`` and ``test``)."""

    accuracy: float
    macro_f1: float
    loss: float
    images: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SplitScores | None:
        """None for a split without photos, which the JSON records as {}."""
        return cls(**data) if data else None


@dataclass(frozen=True)
class Baseline:
    """The frozen-feature logistic regression a pretrained run fits beside its phases."""

    method: str
    C: float
    seconds: float | None
    val: SplitScores | None
    test: SplitScores | None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "val": asdict(self.val) if self.val else {},
            "test": asdict(self.test) if self.test else {},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Baseline | None:
        if not data:
            return None
        return cls(
            method=data["method"],
            C=data["C"],
            seconds=data.get("seconds"),
            val=SplitScores.from_json(data.get("val")),
            test=SplitScores.from_json(data.get("test")),
        )


@dataclass(frozen=True)
class ValGain:
    """Phase 2's paired per-image validation-loss gain over phase 1: the keep rule's
    evidence (``mean`` > 0 means phase 2 is better; ``z`` = mean / se)."""

    mean: float
    se: float
    z: float
    images: int
    phase1_loss: float
    phase2_loss: float


@dataclass(frozen=True, kw_only=True)
class PhaseResult:
    """One finished phase, as state.json and summary.json record it under its number.

    A figure that does not apply to a phase is None and left out of its JSON, so the files
    keep the keys each kind of phase always had: a skipped phase has only ``epochs`` and
    ``skipped``; ``first_trainable_layer`` is written for phase 2 (``schedule`` set) even
    when None."""

    method: str | None = None  # "exact" (the fitted head) or "gradient"
    epochs: int
    best_epoch: int | None = None
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None
    stopped_early: bool | None = None
    resumed: bool | None = None
    optimizer: str | None = None
    learning_rate: float | None = None
    final_learning_rate: float | None = None
    seconds: float | None = None
    train_images_per_s: float | None = None
    checkpoint: str | None = None
    history: list[dict[str, Any]] | None = None  # its epochs' rows; state.json only
    cached_features: bool | None = None
    C: float | None = None  # the exact head's
    C_grid: list[dict[str, float]] | None = None
    baseline: Baseline | None = None  # phase 1 of a pretrained base
    feature_cache: dict[str, str] | None = None  # split -> .npy file
    feature_cache_reused: bool | None = None
    feature_seconds: float | None = None
    val_gain: ValGain | None = None  # phase 2
    first_trainable_layer: str | None = None  # phase 2 (None when no layer trains)
    schedule: str | None = None  # phase 2
    skipped: bool = False  # no epoch to train (EPOCHS=0)

    @property
    def trained(self) -> bool:
        return bool(self.epochs)

    def to_json(self, history: bool = True) -> dict[str, Any]:
        """The phase's JSON; without its epochs' rows for summary.json (``history``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "first_trainable_layer":
                keep = self.schedule is not None
            elif f.name == "history":
                keep = history and value is not None
            elif f.name == "skipped":
                keep = value
            else:
                keep = value is not None
            if keep:
                out[f.name] = _phase_json(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseResult:
        """Keys this version does not know are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        gain = values.get("val_gain")
        return cls(
            **{
                **values,
                "baseline": Baseline.from_json(values.get("baseline")),
                "val_gain": ValGain(**gain) if gain else None,
            }
        )


def _phase_json(value: Any) -> Any:
    if isinstance(value, Baseline):
        return value.to_json()
    return asdict(value) if isinstance(value, ValGain) else value


def trained_phases(phases: Mapping[int, PhaseResult]) -> list[int]:
    """The numbers of the phases that trained at least one epoch, in order."""
    return [number for number, p in phases.items() if p.trained]


# ----------------------------------------------------------------------------- summary.json


@dataclass(frozen=True)
class DataProvenance:
    """What a run was trained on: the data set's manifests and the split kept in the run."""

    manifests_dir: str
    recorded_split: str
    fingerprint: str | None
    manifests: dict[str, str] | None  # file name -> sha256


@dataclass(frozen=True)
class ValScores:
    """The kept phase's best epoch on validation (summary.json's ``final``)."""

    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class TestScores:
    """The kept model on the run's test split (reported, never used to choose)."""

    loss: float
    accuracy: float
    images: int


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on validation (summary.json's ``calibration``): the T
    folded into the saved model's head, and validation's log loss and expected calibration
    error before and after it. ``skipped`` says why no T was fitted (then T is 1)."""

    temperature: float
    images: int  # validation photos it was fitted on
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class UnknownRecord:
    """The unknown-photo detector stored with the run (summary.json's ``unknown``;
    ``pipeline.predict.unknown``): its file, k, rate and threshold."""

    file: str
    k: int
    rate: float
    threshold: float
    train_images: int
    val_images: int


@dataclass
class TrainSummary:
    """summary.json: what a finished train stage reports, read by evaluate, report and
    experiments. The JSON keys are the field names, in this order; ``phases`` and
    ``kept_phase`` are numbered 1, 2 here and keyed "1", "2" in the JSON."""

    run: str
    run_dir: str
    dataset: str
    data: DataProvenance | None
    classes: list[str]
    train_images: int
    val_images: int
    backbone: str
    weights: str
    image_size: int
    device: str
    strategy: str
    replicas: int
    workers: int
    precision: str
    xla: bool
    global_batch: int
    class_weights: list[float] | None
    parameters: int
    resumed: bool
    phases: dict[int, PhaseResult]  # without their history
    epochs: int
    seconds: float
    final: ValScores | None
    kept_phase: int | None  # 2, or 1 when phase 2 did not lower the val loss beyond noise
    test: TestScores | None
    baseline: Baseline | None
    memory: RunMemory  # the estimate (pipeline.memory) and the measured peaks
    files: list[str]
    calibration: Calibration | None = None  # None: trained before temperature scaling
    unknown: UnknownRecord | None = None  # None: no detector (trained before, or no val)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            **out,
            "data": _plain(self.data),
            "phases": _phase_keys(self.phases, history=False),
            "final": _plain(self.final),
            "kept_phase": None if self.kept_phase is None else str(self.kept_phase),
            "test": _plain(self.test),
            "baseline": self.baseline.to_json() if self.baseline else None,
            "memory": self.memory.to_json(),
            "calibration": _plain(self.calibration),
            "unknown": _plain(self.unknown),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSummary:
        """Unknown keys are ignored; keys an older run did not write read as None (memory
        as an empty ``RunMemory``, phases as none; calibration and unknown as None)."""
        values = {f.name: data.get(f.name) for f in fields(cls)}
        kept = values["kept_phase"]
        return cls(
            **{
                **values,
                "data": _build(DataProvenance, values["data"]),
                "phases": _phase_numbers(values["phases"]),
                "final": _build(ValScores, values["final"]),
                "kept_phase": None if kept is None else int(kept),
                "test": _build(TestScores, values["test"]),
                "baseline": Baseline.from_json(values["baseline"]),
                "memory": RunMemory.from_json(values["memory"]),
                "calibration": _build(Calibration, values["calibration"]),
                "unknown": _build(UnknownRecord, values["unknown"]),
            }
        )


def _plain(value: Any) -> dict[str, Any] | None:
    return None if value is None else asdict(value)


def _build(kind: type[_T], data: Mapping[str, Any] | None) -> _T | None:
    return None if data is None else kind(**data)


def write_summary(run_dir: str | Path, summary: TrainSummary) -> Path:
    return write_json(Path(run_dir) / SUMMARY_FILE, summary.to_dict())


def read_summary(run_dir: str | Path) -> TrainSummary | None:
    """The run's summary, or None when it has none (an unfinished run)."""
    data = read_json(Path(run_dir) / SUMMARY_FILE)
    return None if data is None else TrainSummary.from_dict(data)


# ----------------------------------------------------------------------------- resuming


@dataclass
class TrainState:
    """state.json: the phases a run has finished (with their history), so that a restarted
    run skips them."""

    phases: dict[int, PhaseResult] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"phases": _phase_keys(self.phases, history=True)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainState:
        return cls(_phase_numbers(data.get("phases")))


def read_state(work_dir: Path) -> TrainState:
    """state.json: the phases a run has finished (none yet when it has no file)."""
    path = work_dir / STATE_FILE
    if not path.is_file():
        return TrainState()
    return TrainState.from_json(json.loads(path.read_text(encoding="utf-8")))


def write_state(work_dir: Path, state: TrainState) -> Path:
    return write_json(work_dir / STATE_FILE, state.to_json())
