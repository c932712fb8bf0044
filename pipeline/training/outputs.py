"""What a finished run leaves behind: the model (calibrated: ``pipeline.training.posthoc``),
its labels, the SavedModel export, the learning curves, the unknown-photo detector,
summary.json (with memory estimated and measured), and the closing lines printed about them.

Everything is written atomically under models/<run>/; a non-chief worker writes only its
model, labels and summary, in its own sub-folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.provenance import RUN_DATA_DIR, read_record
from pipeline.files import atomic_path, replace_dir, write_json
from pipeline.memory.record import RunMemory, phases_run
from pipeline.model import count_params, serving_archive
from pipeline.predict.unknown import UNKNOWN_FILE, load_detector
from pipeline.runs import (
    BACKUP_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    SUMMARY_FILE,
)
from pipeline.summary import (
    DataProvenance,
    PhaseResult,
    TestScores,
    TrainSummary,
    ValScores,
    trained_phases,
    write_summary,
)
from pipeline.training.context import TrainingRun
from pipeline.training.feeds import eval_rows_feed
from pipeline.training.loop import compile_for_training, validate
from pipeline.training.posthoc import fit_after_training
from pipeline.training.runtime import (
    describe_devices,
    input_pipelines,
    local_gpus,
    strategy_name,
)


@dataclass
class TrainResult:
    run_dir: Path
    summary: TrainSummary  # summary.json as written
    files: list[Path] = field(default_factory=list)


def finish(
    run: TrainingRun,
    phases: dict[int, PhaseResult],
    kept: int,
    precision: str,
    xla: bool,
    seconds: float,
    resumed: bool,
) -> TrainResult:
    """Write the run's outputs and summary, print what they are, return them."""
    cfg, model = run.cfg, run.classifier
    if getattr(model, "optimizer", None) is None:  # only the feature head was compiled
        lr = cfg.train.fine_tune_lr if 2 in trained_phases(phases) else cfg.train.head_lr
        compile_for_training(model, run.strategy, lr, cfg.train)
    # The model holds the kept phase's best weights, so its validation metrics are that
    # epoch's (the tests check them against the saved model).
    final = ValScores(phases[kept].best_val_loss, phases[kept].best_val_accuracy)
    out = run.work_dir
    files = [out / CONFIG_FILE, out / HISTORY_FILE]
    # Before saving: the temperature is folded into the model's weights (on every worker).
    calibration, unknown, written = fit_after_training(run)
    files.extend(written)
    test = _test_scores(run)  # the saved model's (calibrated) loss
    with atomic_path(out / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
    files.append(out / MODEL_FILE)
    files.append(write_json(out / LABELS_FILE, run.classes))
    if run.chief:
        serving = serving_archive(
            model, run.backbone, run.classes, cfg.input.eval_crop_fraction, load_detector(out)
        )
        files.append(_export_serving(serving, out / SAVED_MODEL_DIR))
        files.append(_plot_learning_curves(run.history, out / CURVES_FILE))
    files.extend(p for p in (run.checkpoint_path(1), run.checkpoint_path(2)) if p.is_file())
    if cfg.train.tensorboard:
        files.append(out / "logs")
    summary = TrainSummary(
        run=cfg.train.run_name,
        run_dir=str(out),
        dataset=cfg.data.dataset,
        data=_provenance(cfg, out),
        classes=run.classes,
        train_images=len(run.train_rows),
        val_images=len(run.val_rows),
        backbone=cfg.model.backbone,
        weights=cfg.model.weights,
        image_size=cfg.image_size,
        device=describe_devices(run.strategy),
        strategy=strategy_name(run.strategy),
        replicas=run.strategy.num_replicas_in_sync,
        workers=input_pipelines(run.strategy),
        precision=precision,
        xla=xla,
        global_batch=run.global_batch,
        class_weights=run.class_weights,
        parameters=count_params(model.weights),
        resumed=resumed,
        phases={number: replace(p, history=None) for number, p in phases.items()},
        epochs=len(run.history),
        seconds=seconds,
        final=final,
        kept_phase=kept,
        test=test,
        baseline=phases[1].baseline,
        memory=_memory_figures(cfg, len(run.classes), run.rss_before),
        files=[str(p) for p in files],
        calibration=calibration,
        unknown=unknown,
    )
    files.append(write_summary(out, summary))
    _remove_backups(out)
    _print_outputs(out, files, summary)
    return TrainResult(out, summary, files)


def _test_scores(run: TrainingRun) -> TestScores | None:
    """The kept model's loss and accuracy on the run's test split (None without one).

    Reported beside the baseline's, never used to choose anything; ``make evaluate`` gives
    the full account.
    """
    if not run.test_rows:
        return None
    scores = validate(run.classifier, eval_rows_feed(run, run.test_rows), run.strategy)
    return TestScores(scores["loss"], scores["accuracy"], len(run.test_rows))


def _provenance(cfg: Config, out: Path) -> DataProvenance:
    """What the run was trained on: the data set's record and the split kept in the run."""
    record = read_record(out / RUN_DATA_DIR)
    return DataProvenance(
        manifests_dir=str(cfg.dataset_dir()),
        recorded_split=str(out / RUN_DATA_DIR),
        fingerprint=record.fingerprint if record else None,
        manifests=record.manifests if record else None,
    )


def current_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _memory_figures(cfg: Config, num_classes: int, rss_before: int | None) -> RunMemory:
    """The estimate for this run (pipeline.memory) next to what the run really used."""
    import resource

    from pipeline.memory import run_memory_estimate

    # The run is done; an estimate that cannot be made is recorded as an error, not raised.
    memory = run_memory_estimate(cfg, num_classes)
    measured: dict[str, int] = {
        # Linux reports KiB. The process peak includes the TensorFlow runtime, the input
        # pipeline and the feature cache, so it exceeds the estimate's model-only figure.
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if rss_before:
        measured["process_rss_before_training_bytes"] = rss_before
    if local_gpus():
        info = tf.config.experimental.get_memory_info("GPU:0")
        measured["gpu_peak_bytes"] = int(info["peak"])
    return replace(memory, measured=measured)


def _remove_backups(out: Path) -> None:
    backup = out / BACKUP_DIR
    if backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()


def _export_serving(serving: keras.export.ExportArchive, path: Path) -> Path:
    """The run's SavedModel (``serving_archive``), written atomically."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    serving.write_out(str(tmp), verbose=False)
    replace_dir(tmp, path)
    return path


def _plot_learning_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, both phases, with the
    phase boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.plots import save_figure

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[metric] for r in history], "o-", ms=3, label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", ms=3, label=f"val {metric}")
        phase_one = [r["epoch"] for r in history if r["phase"] == 1]
        if phase_one and len(phase_one) < len(history):
            ax.axvline(max(phase_one) + 0.5, color="grey", ls="--", lw=1)
            ax.text(
                max(phase_one) + 0.6,
                0.98,
                "fine-tuning",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="grey",
            )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves (phase 1: frozen base | phase 2: fine-tuning)")
    return save_figure(fig, path)


def _print_outputs(out: Path, files: list[Path], summary: TrainSummary) -> None:
    final = summary.final
    print(
        f"Done in {summary.seconds:.0f}s: val_accuracy {final.val_accuracy:.4f}, "
        f"val_loss {final.val_loss:.4f}. Wrote {out}/:"
    )
    notes = {
        MODEL_FILE: "the trained classifier (keras.models.load_model)",
        SAVED_MODEL_DIR: "SavedModel for serving: `serve`(RGB pixels 0-255) -> probabilities",
        LABELS_FILE: "class names, in output order",
        CONFIG_FILE: "the effective configuration (--config to repeat the run)",
        HISTORY_FILE: "loss, accuracy, learning rate, time per epoch, both phases",
        CURVES_FILE: "learning curves, phase boundary marked",
        SUMMARY_FILE: "time per phase, images/s, best epochs, final validation metrics, "
        "calibration, memory estimated and measured",
        UNKNOWN_FILE: "training photos' features and threshold: unknown_score in make predict",
        "logs": "TensorBoard logs (tensorboard --logdir ...)",
    }
    for line in comparison_lines(summary):
        print(line)
    for path in files:
        rel = path.relative_to(out) if path.is_relative_to(out) else path
        note = notes.get(
            str(rel), "best weights of that phase" if CHECKPOINTS_DIR in str(rel) else ""
        )
        print(f"  {str(rel) + ('/' if path.is_dir() else ''):<32} {note}")
    memory = summary.memory
    training = memory.estimate.training if memory.estimate else {}
    phases = phases_run(training, trained_phases(summary.phases))  # only those that trained
    if phases:
        estimated = ", ".join(
            f"{name} {figures.realistic_bytes / 2**20:,.0f} MiB" for name, figures in phases.items()
        )
        measured = memory.measured
        peak = measured["process_peak_rss_bytes"] / 2**20
        before = measured.get("process_rss_before_training_bytes")
        already = (
            f", {before / 2**20:,.0f} MiB of it in use before training started" if before else ""
        )
        print(
            f"Memory: estimated training ({estimated}); measured process peak {peak:,.0f} MiB"
            f"{already}. The estimate counts the model's tensors for one batch; the process "
            "peak adds TensorFlow's runtime, the input pipeline and Python."
        )


def comparison_lines(summary: TrainSummary) -> list[str]:
    """What fine-tuning added over the frozen-feature baseline, on validation and test."""
    baseline = summary.baseline
    if not baseline:
        return []
    kept = {1: "phase 1 (frozen base, fitted head)", 2: "phase 2 (fine-tuned)"}
    lines = [f"Kept: {kept.get(summary.kept_phase, summary.kept_phase)}."]
    model = {
        "val": summary.final.val_accuracy if summary.final else None,
        "test": summary.test.accuracy if summary.test else None,
    }
    for split, theirs in (("val", baseline.val), ("test", baseline.test)):
        ours = model[split]
        if theirs is None or ours is None:
            continue
        lines.append(
            f"  {split:<4} accuracy {ours:.4f}; frozen-feature baseline {theirs.accuracy:.4f} "
            f"({100 * (ours - theirs.accuracy):+.1f} points, {theirs.images} images)"
        )
    return lines
