"""``MemoryEstimate``: the compact figures that cross stage boundaries, and their JSON.

Train records one under ``memory.estimate`` in a run's summary.json, next to what the run
measured (``RunMemory``, the summary's ``memory``); evaluate (for runs that predate it), the
HTML report and the experiment table read it back. ``to_json`` and ``from_json`` are the one
place each becomes JSON and back; the field names are the JSON keys.

>>> figures = PhaseFigures(5, 400, 300, 100, 25, 8, True)
>>> est = MemoryEstimate(
...     {"input": "32x32x3"}, 8, "float32", 5, {"float32": 20}, 60,
...     FlopsPerImage(10, {"all layers train": 30}), {"all layers train": figures}, None, 1.32,
... )
>>> est.to_json()["training"]["all layers train"]["realistic_bytes"]
300
>>> MemoryEstimate.from_json(est.to_json()) == est
True
>>> memory = RunMemory(est, measured={"process_peak_rss_bytes": 900})
>>> RunMemory.from_json(memory.to_json()) == memory
True
>>> RunMemory.from_json({"estimate": {"error": "memory estimate unavailable: no"}}).error
'memory estimate unavailable: no'
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PhaseFigures:
    """One training phase at the configured batch size."""

    trainable: int  # trainable parameters in this phase
    textbook_bytes: int  # every activation kept, no gradients or optimizer state
    realistic_bytes: int  # fixed_bytes + batch x per_image_bytes, or the allocator's chunks
    fixed_bytes: int  # weights, gradients, optimizer state
    per_image_bytes: int  # simulated peak per image x the framework overhead
    max_batch: int | None  # the largest batch within budget_bytes (None without a budget)
    fits: bool | None  # realistic_bytes <= budget_bytes (None without a budget)


@dataclass(frozen=True)
class FlopsPerImage:
    forward: int
    train: dict[str, int]  # one training step, by phase label


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate of a configured run, as train's summary.json holds it."""

    source: dict[str, Any]  # backbone, image size, head, classes, input, Keras's param count
    batch_size: int
    precision: str
    params: int
    parameter_bytes: dict[str, int]  # by dtype: float32, float16, int8
    inference_bytes: int  # one image: parameters + the peak of tensors alive at once
    flops_per_image: FlopsPerImage
    training: dict[str, PhaseFigures]  # by phase label (``model_phases``'s labels)
    budget_bytes: float | None
    overhead: float

    @classmethod
    def from_estimate(cls, est: dict[str, Any]) -> MemoryEstimate:
        """The compact figures of ``estimate_layers``'s result."""
        phases = est["phases"]
        return cls(
            source=est.get("source", {}),
            batch_size=est["batch"],
            precision=est["precision"],
            params=est["totals"]["params"],
            parameter_bytes=est["parameter_bytes"],
            inference_bytes=est["inference"]["bytes"],
            flops_per_image=FlopsPerImage(
                forward=est["totals"]["flops"],
                train={label: p["train_flops"] for label, p in phases.items()},
            ),
            training={
                label: PhaseFigures(
                    trainable=p["trainable"],
                    textbook_bytes=p["textbook"]["total"],
                    realistic_bytes=p["realistic"]["total"],
                    fixed_bytes=p["realistic"]["fixed"],
                    per_image_bytes=p["realistic"]["per_image"],
                    max_batch=p.get("max_batch"),
                    fits=p.get("fits"),
                )
                for label, p in phases.items()
            },
            budget_bytes=est.get("budget"),
            overhead=est["overhead"],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryEstimate:
        return cls(
            **{
                **data,
                "flops_per_image": FlopsPerImage(**data["flops_per_image"]),
                "training": {k: PhaseFigures(**f) for k, f in data["training"].items()},
            }
        )


UNAVAILABLE = "memory estimate unavailable"  # how an error in the estimate's place begins


@dataclass(frozen=True)
class RunMemory:
    """A train summary's ``memory``: the estimate for the run, or why there is none
    (``error``, when it could not be made), next to what the run measured (process peak,
    resident memory before training, GPU peak; bytes by name). Its JSON is summary.json's
    ``{"estimate": MemoryEstimate.to_json() or {"error": ...}, "measured": {...}}``; a
    summary that records neither (an older run) reads as ``RunMemory()``."""

    estimate: MemoryEstimate | None = None
    error: str | None = None
    measured: dict[str, int] = field(default_factory=dict)

    def estimate_json(self) -> dict[str, Any] | None:
        """What stands under ``estimate``: the estimate's JSON, the error, or None."""
        if self.estimate is not None:
            return self.estimate.to_json()
        return None if self.error is None else {"error": self.error}

    def to_json(self) -> dict[str, Any]:
        estimate = self.estimate_json()
        return {
            **({} if estimate is None else {"estimate": estimate}),
            "measured": dict(self.measured),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RunMemory:
        data = data or {}
        recorded = data.get("estimate")
        measured = dict(data.get("measured") or {})
        if not recorded:
            return cls(measured=measured)
        if "error" in recorded:
            return cls(error=str(recorded["error"]), measured=measured)
        try:
            return cls(MemoryEstimate.from_json(recorded), measured=measured)
        except (KeyError, TypeError) as exc:  # recorded by a version with other fields
            return cls(error=f"{UNAVAILABLE}: unreadable record ({exc})", measured=measured)


def phases_run(training: dict[str, Any], trained: Collection[int]) -> dict[str, Any]:
    """The per-phase figures of an estimate (``MemoryEstimate.training``, keyed by
    ``model_phases``'s labels) for the phases a run really trained (their numbers, as
    ``pipeline.runs.trained_phases`` gives them): EPOCHS=0 drops phase 2."""
    return {
        label: figures
        for label, figures in training.items()
        if not label.startswith("phase ") or int(label.split(":")[0].split()[-1]) in trained
    }
