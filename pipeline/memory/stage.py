"""The ``memory`` stage (`make memory`, ``python -m pipeline memory``): estimate a layer spec
or the configured classifier, add what to change when it does not fit and the time per
epoch, print the Markdown report and write it with its JSON under reports/memory/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.config import Config, resolve_precision
from pipeline.data.manifest import CLASSES_FILE, SPLIT_FILES
from pipeline.files import atomic_write_text, generated_dir, write_json
from pipeline.memory.classifier import (
    configured_kernels,
    configured_overhead,
    configured_slots,
    estimate_classifier,
    measure_throughput,
)
from pipeline.memory.estimate import DTYPE_BYTES, estimate_layers, rank_remedies
from pipeline.memory.render import render_markdown
from pipeline.memory.spec import parse_layers
from pipeline.units import format_count, parse_quantity


def _dataset_file_count(cfg: Config, name: str) -> int | None:
    path = cfg.dataset_dir() / name
    if not path.is_file():
        return None
    if name.endswith(".json"):
        return len(json.loads(path.read_text(encoding="utf-8")))
    with open(path, encoding="utf-8") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def estimate_memory(
    cfg: Config,
    layers: str = "",
    input_shape: str = "",
    dtype: str = "float32",
    head: bool = True,
    num_classes: int | None = None,
    table: bool = True,
) -> list[Path]:
    """The ``memory`` stage: print the per-layer table and the summary for a layer spec
    (``layers`` + ``input_shape``) or the configured backbone, and write both as Markdown and
    JSON under reports/memory/. Returns the paths written."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}. Received: {dtype!r}")
    if bool(layers) != bool(input_shape):
        raise ValueError(
            "--layers and --input go together, e.g. --input 200x300x3 "
            "--layers conv3x3s2same:100,conv3x3s2same:200"
        )
    budget = parse_quantity(cfg.memory.budget)
    batch, slots = cfg.input.batch_size, configured_slots(cfg)
    overhead, kernels = configured_overhead(cfg), configured_kernels(cfg)
    notes: list[str] = []
    model = None
    if layers:
        rows = parse_layers(input_shape, layers)
        precision = resolve_precision(cfg.train.precision, gpu=False)
        phases = {"all layers train": rows}
        est = estimate_layers(
            rows, batch, dtype, precision, slots, overhead, phases, budget, kernels
        )
        shape = "x".join(map(str, rows[0].shape))
        est["source"] = {"input": shape, "layers": layers}
        est["budget"] = budget
        digest = hashlib.sha1(layers.encode()).hexdigest()[:8]
        name = f"layers-{shape}-{digest}-b{batch}"
        side = rows[0].shape[0] if rows[0].shape[0] == rows[0].shape[1] else None
    else:
        if num_classes is None:
            num_classes = _dataset_file_count(cfg, CLASSES_FILE)
            if num_classes is None:
                num_classes = 5
                notes.append(
                    "5 classes assumed (no classes.json yet): run `make data` or pass --classes"
                )
        est, phases, model = estimate_classifier(cfg, num_classes, head, dtype)
        side = cfg.image_size
        name = f"{cfg.model.backbone}-{side}-b{batch}" + ("" if head else "-nohead")
    worst = max(phases, key=lambda k: est["phases"][k]["realistic"]["total"])
    est["remedies"] = (
        []
        if est["phases"][worst]["fits"]
        else rank_remedies(
            phases[worst], batch, budget, est["precision"], slots, overhead, side, kernels=kernels
        )
    )
    est["remedies_for"] = worst
    _add_epoch_time(est, cfg, model, notes)
    est["notes"] = notes
    text = render_markdown(est)
    print(text if table else render_markdown(est, layer_table=False))
    out = generated_dir(Path(cfg.paths.reports) / "memory") / name
    paths = [
        atomic_write_text(out.with_suffix(".md"), text),
        write_json(out.with_suffix(".json"), est),
    ]
    print(f"Wrote {paths[0]} and {paths[1].name}")
    return paths


def _add_epoch_time(est: dict[str, Any], cfg: Config, model: Any, notes: list[str]) -> None:
    images = cfg.memory.epoch_images or _dataset_file_count(cfg, SPLIT_FILES["train"])
    setting = cfg.memory.throughput.strip().lower()
    throughput, origin = None, ""
    if setting == "measure":
        if model is None:
            raise ValueError(
                "memory.throughput=measure times a Keras model; with --layers give "
                "a number instead, e.g. memory.throughput=2T"
            )
        last = est["phases"][next(reversed(est["phases"]))]
        batch = min(est["batch"], 8)
        throughput = measure_throughput(model, last["train_flops"], batch)
        origin = f"measured: 3 training steps at batch {batch} on this machine"
    elif setting:
        throughput, origin = parse_quantity(setting, "memory.throughput"), "memory.throughput"
    est["throughput"] = {"flops_per_second": throughput, "origin": origin, "images": images}
    if throughput and images:
        for phase in est["phases"].values():
            phase["epoch_seconds"] = images * phase["train_flops"] / throughput
    elif not throughput:
        notes.append(
            "No epoch time: set memory.throughput=measure (a short timed run here) or "
            "the device's FLOP/s, e.g. memory.throughput=50T"
        )
    else:  # a throughput (measured or given) but no epoch size: still say what it is
        notes.append(
            f"Throughput {format_count(throughput)}FLOP/s ({origin}). No epoch time: no "
            "train.csv yet to count the images of an epoch; run `make data` or set "
            "memory.epoch_images"
        )
