"""``MemoryEstimate``: the compact figures that cross stage boundaries, and their JSON.

Train records one under ``memory.estimate`` in a run's summary.json; evaluate (for runs that
predate it), the HTML report and the experiment table read it back. ``to_json`` and
``from_json`` are the one place it becomes JSON and back; the field names are the JSON keys.

>>> figures = PhaseFigures(5, 400, 300, 100, 25, 8, True)
>>> est = MemoryEstimate(
...     {"input": "32x32x3"}, 8, "float32", 5, {"float32": 20}, 60,
...     FlopsPerImage(10, {"all layers train": 30}), {"all layers train": figures}, None, 1.32,
... )
>>> est.to_json()["training"]["all layers train"]["realistic_bytes"]
300
>>> MemoryEstimate.from_json(est.to_json()) == est
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PhaseFigures:
    """One training phase at the configured batch size."""

    trainable: int  # trainable parameters in this phase
    textbook_bytes: int  # every activation kept, no gradients or optimizer state
    realistic_bytes: int  # fixed_bytes + batch x per_image_bytes
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


def phases_run(training: dict[str, Any], run_phases: dict[str, Any]) -> dict[str, Any]:
    """The per-phase figures of an estimate (``MemoryEstimate.to_json()["training"]``, keyed
    by ``model_phases``'s labels) for the phases a run really trained, by its summary's
    ``phases`` ({"1": {"epochs": 3, ...}, "2": ...}): EPOCHS=0 drops phase 2."""
    ran = {number for number, phase in run_phases.items() if phase.get("epochs")}
    return {
        label: figures
        for label, figures in training.items()
        if not label.startswith("phase ") or label.split(":")[0].split()[-1] in ran
    }
