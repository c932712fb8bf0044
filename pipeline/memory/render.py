"""The ``memory`` stage's Markdown report: the per-layer table, then the working for
parameters, inference, training, the remedies and the time per epoch.

Reads the dict ``estimate_layers`` returns (with what the stage adds: source, budget,
remedies, throughput, notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.memory.estimate import BUDGET_HEADROOM, DTYPE_BYTES
from pipeline.units import format_bytes, format_count

LAYER_COLUMNS = ("#", "layer", "type", "output", "activations", "params", "trainable", "MACs")
LAYER_COLUMNS += ("FLOPs", "working")


def _table(header: Sequence[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


_KERNELS = {
    "eigen": "TensorFlow's own CPU kernels (an im2col buffer per convolution backward)",
    "onednn": "oneDNN's CPU kernels (no im2col buffer; float16 runs Eigen's)",
}


def _why(est: dict[str, Any]) -> str:
    return (
        "The textbook minimum keeps every layer's output for every image and ignores "
        "gradients and optimizer state; the realistic figure keeps only the tensors the "
        "backward pass of the trainable layers reads (simulated tensor by tensor), but adds "
        f"float32 gradients with the optimizer update's temporaries, "
        f"{est['optimizer_slots']} optimizer values per trainable parameter"
        f"{', float16 weight copies' if est['precision'].startswith('mixed') else ''} and the "
        f"measured framework overhead ({est['overhead']:.2f}x per image). Convolution "
        f"scratch is that of {_KERNELS[est['kernels']]} (memory.kernels)."
    )


def render_markdown(est: dict[str, Any], layer_table: bool = True) -> str:
    """Markdown: per-layer table, then the working for parameters, inference and training."""
    src, tot, inf, size = est["source"], est["totals"], est["inference"], DTYPE_BYTES[est["dtype"]]
    batch, rows = est["batch"], est["layers"]
    what = (
        f"{src['backbone']} {'with its head' if src['head'] else 'without its head'}"
        if "backbone" in src
        else f"layers {src['layers']}"
    )
    out = [f"# Memory and compute estimate: {what}, input {src['input']}, batch {batch}", ""]
    if layer_table:
        numbers = ("activations", "params", "trainable", "macs", "flops")
        body = [
            [
                i,
                r["name"],
                r["type"],
                _shape(r["shape"]),
                *(f"{r[k]:,}" for k in numbers),
                r["working"],
            ]
            for i, r in enumerate(rows)
        ]
        total = f"{tot['activations']:,} (+{tot['input']:,} input)"
        sums = (f"{tot[k]:,}" for k in ("params", "macs", "flops"))
        body.append(["", "**total**", "", "", total, next(sums), "", *sums, ""])
        out += _table(LAYER_COLUMNS, body)
        out += ["", "Trainable counts are those of the last phase below.", ""]
    weighted = [r["params"] for r in rows if r["params"]]
    sums = " + ".join(f"{p:,}" for p in weighted) + " = " if 1 < len(weighted) <= 12 else ""
    keras = src.get("keras_count_params")
    pb = est["parameter_bytes"]
    out += [
        "## Parameters and inference",
        "",
        f"- Parameters: {sums}{tot['params']:,}"
        + (
            f" (Keras count_params(): {keras:,}, "
            f"{'matches' if keras == tot['params'] else 'DIFFERS'})"
            if keras is not None
            else ""
        )
        + f". Memory: {format_bytes(pb['float32'])} float32, {format_bytes(pb['float16'])} "
        f"float16/bfloat16, {format_bytes(pb['int8'])} int8.",
        f"- Inference on one image ({est['dtype']}): parameters {inf['parameter_bytes']:,} B + "
        f"peak of the tensors alive at once {inf['activation_bytes']:,} B "
        f"({' + '.join(_names(inf['peak_at']))}: {inf['peak_values']:,} values x {size} B) = "
        f"**{inf['bytes']:,} B = {format_bytes(inf['bytes'])}**.",
        f"- FLOPs per image: forward {format_count(tot['flops'])} "
        f"({format_count(tot['macs'])} multiply-adds); training step "
        + ", ".join(
            f"{format_count(p['train_flops'])} ({label})" for label, p in est["phases"].items()
        )
        + ".",
        "",
        f"## Training at batch {batch}",
        "",
    ]
    budget = est.get("budget")
    header = ["phase", "trainable params", f"textbook minimum ({est['dtype']})"]
    header += [f"realistic ({est['precision']})", "per extra image"]
    free = f" ({BUDGET_HEADROOM:.0%} kept free)"
    largest = f"largest batch in {format_bytes(budget)}{free}" if budget else "largest batch"
    header += [largest, "fits"]
    body = [
        [label, f"{p['trainable']:,}", format_bytes(p["textbook"]["total"])]
        + [format_bytes(p["realistic"][k]) for k in ("total", "per_image")]
        + [p.get("max_batch", ""), "yes" if p.get("fits") else "**no**"]
        for label, p in est["phases"].items()
    ]
    out += _table(header, body)
    out.append("")
    for label, p in est["phases"].items():
        t, r = p["textbook"], p["realistic"]
        out += [
            f"- {label}, textbook minimum: {batch} x ({tot['activations']:,} activations + "
            f"{tot['input']:,} input values) x {size} B + parameters {t['parameters']:,} B = "
            f"**{t['total']:,} B = {format_bytes(t['total'])}**.",
            f"- {label}, realistic: weights {format_bytes(r['weights'])}"
            + f" + optimizer {format_bytes(r['optimizer'])}, and at the step's worst moment "
            f"for this batch gradients and their update's temporaries"
            + (
                f" with the float16 weight copies still alive (of "
                f"{format_bytes(r['weight_copies'])} cast each step)"
                if r["weight_copies"]
                else ""
            )
            + f" {format_bytes(r['gradients'])} + convolution scratch "
            f"{format_bytes(r['scratch'])} + {batch} x {format_bytes(r['per_image'])} (input "
            f"pipeline {format_bytes(r['input_pipeline'])} and tensors alive, at most "
            f"{r['peak']['values']:,} values, {r['peak']['kept_values']:,} of them kept for the "
            f"backward pass, x {2 if r['precision'].startswith('mixed') else 4} B x "
            f"{r['overhead']:.2f}) = {format_bytes(r['tensors_total'])}; replayed through "
            f"TensorFlow's allocator from the weights' creation on, whose chunks can be up "
            f"to twice a tensor, "
            f"{format_bytes(r['allocator'])}: the larger, **{format_bytes(r['total'])}**.",
        ]
    out += ["", _why(est), ""]
    if est.get("remedies"):
        out += [
            f"## Does not fit in {format_bytes(budget)}: remedies for "
            f"{est['remedies_for']}, largest saving first",
            "",
        ]
        body = [
            [
                m["remedy"],
                *(format_bytes(m[k]) for k in ("bytes", "saves")),
                "yes" if m["fits"] else "no",
                m["note"],
            ]
            for m in est["remedies"]
        ]
        out += _table(["remedy", "new figure", "saves", "fits", "note"], body)
        out.append("")
    tp = est.get("throughput") or {}
    if tp.get("flops_per_second") and tp.get("images"):
        out += [
            f"## Time per epoch ({tp['images']:,} images at "
            f"{format_count(tp['flops_per_second'])}FLOP/s, {tp['origin']})",
            "",
        ]
        out += [f"- {label}: {p['epoch_seconds']:,.0f} s" for label, p in est["phases"].items()]
        out.append("")
    out += [f"Note: {n}" for n in est.get("notes", [])]
    return "\n".join(out).rstrip() + "\n"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _names(names: list[str], limit: int = 6) -> list[str]:
    return names if len(names) <= limit else [*names[:limit], f"{len(names) - limit} more"]
