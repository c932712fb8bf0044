"""Running an experiment: every cell x repeat trained and evaluated, into results.csv.

Resumable: results.csv is rewritten (atomically) after every run, and a run already in it
is never repeated. A failed run is recorded with its error and the others go on.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import Config, with_overrides
from pipeline.data.stage import ensure_manifests
from pipeline.experiment.grid import cell_id, cell_label, experiment_plan
from pipeline.experiment.results import RESULTS_FILE, RunRow, read_results, write_results
from pipeline.experiment.summary import summarize
from pipeline.files import generated_dir
from pipeline.memory.record import phases_run
from pipeline.summary import TrainSummary, trained_phases


@dataclass
class ExperimentResult:
    out_dir: Path
    ran: int
    skipped: int
    failed: int
    summary: dict[str, Any] = field(default_factory=dict)


def device_label() -> str:
    """'1x NVIDIA H100 ...' or 'CPU <model> (N threads)': results group by this."""
    import tensorflow as tf

    from pipeline.training.runtime import local_gpus

    gpus = local_gpus()
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)}x {details.get('device_name', 'GPU')}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} threads)"


def _one_run(run_cfg: Config, row: RunRow) -> RunRow:
    """Train and evaluate one configuration in this process: ``row`` with its figures."""
    import keras
    import tensorflow as tf

    from pipeline.evaluate.stage import evaluate
    from pipeline.training import train

    keras.backend.clear_session()
    trained = train(run_cfg)
    evaluated = evaluate(run_cfg)
    summary, metrics = trained.summary, evaluated.metrics
    baseline = metrics.get("baseline")
    epochs = sum(p.epochs for p in summary.phases.values())
    train_images = epochs * (summary.train_images or 0)
    return replace(
        row,
        status="ok",
        test_accuracy=metrics["accuracy"],
        test_loss=metrics["loss"],
        macro_f1=metrics["macro_f1"],
        # nan for a network trained from scratch: it has no frozen features to compare with
        baseline_accuracy=baseline["accuracy"] if baseline else math.nan,
        over_baseline=metrics["accuracy"] - baseline["accuracy"] if baseline else math.nan,
        train_seconds=summary.seconds,
        images_per_s=train_images / summary.seconds if summary.seconds else 0.0,
        parameters=summary.parameters or None,
        estimated_train_memory_bytes=peak_training_memory(summary),
        tensorflow=tf.__version__,
    )


def peak_training_memory(summary: TrainSummary) -> int | None:
    """The largest realistic training estimate over the phases a run trained, from its
    train summary's recorded ``MemoryEstimate`` (results.csv's
    estimated_train_memory_bytes); None when the summary has no estimate."""
    estimate = summary.memory.estimate
    if estimate is None:
        return None
    phases = phases_run(estimate.training, trained_phases(summary.phases))
    values = [f.realistic_bytes for f in phases.values() if f.realistic_bytes]
    return int(max(values)) if values else None


def _format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_experiment(cfg: Config) -> ExperimentResult:
    """Every cell x repeats, resumable; then the summary over every results file given."""
    name, base, cells = experiment_plan(cfg)
    out = generated_dir(Path(cfg.paths.reports) / "experiments") / name
    results_path = out / RESULTS_FILE
    rows = read_results(results_path) if results_path.is_file() else []
    done = {(r.cell, r.seed) for r in rows if r.ok or not cfg.experiment.retry_failed}
    rows = [r for r in rows if (r.cell, r.seed) in done]
    seeds = [cfg.train.seed + i for i in range(cfg.experiment.repeats)]
    plan = [(c, s) for c in cells for s in seeds]
    todo = [(c, s) for c, s in plan if (cell_id(c), s) not in done]
    print(
        f"Experiment {name}: {len(cells)} cell(s) x {len(seeds)} seed(s) = {len(plan)} runs; "
        f"{len(plan) - len(todo)} already done, {len(todo)} to run. Results: {results_path}"
    )
    ensure_manifests(base)  # one split for every run, made once up front
    device = device_label()
    started, ran, failed = time.perf_counter(), 0, 0
    for index, (cell, seed) in enumerate(todo, start=1):
        run_name = f"{name}-{cell_id(cell)}-s{seed}"
        run_cfg = with_overrides(
            base,
            {
                **cell,
                "train.seed": seed,
                "train.run_name": run_name,
                "eval.run": run_name,
                "paths.reports": str(out / "runs"),
            },
        )
        print(f"[{index}/{len(todo)}] {cell_label(cell)} seed {seed}", flush=True)
        planned = RunRow(
            run=run_name,
            cell=cell_id(cell),
            overrides=cell_label(cell),
            seed=seed,
            status="failed",
            device=device,
            cpu_threads=os.cpu_count(),
        )
        try:
            row = _one_run(run_cfg, planned)
        except Exception as exc:  # recorded, and the other runs go on
            failed += 1
            message = " ".join(str(exc).split())[:300]
            row = replace(planned, error=f"{type(exc).__name__}: {message}")
            print(f"    run failed: {row.error}")
        ran += 1
        rows.append(row)
        write_results(results_path, rows)
        elapsed = time.perf_counter() - started
        eta = elapsed / index * (len(todo) - index)
        print(
            f"    {row.status}; {_format_eta(elapsed)} so far, about {_format_eta(eta)} left",
            flush=True,
        )
    extra = [Path(p.strip()) for p in cfg.experiment.results.split(",") if p.strip()]
    summary = summarize([results_path, *extra], out, cfg.experiment)
    return ExperimentResult(out, ran, len(plan) - len(todo), failed, summary)
