"""The train stage as a package; ``train(cfg)`` (``stage.py``) is the entry.

    runtime    where training runs: strategy, precision, device description
    trainset   the images a run trains on: recorded split, global batch, class weights
    context    TrainingRun: what the phases share; each phase's checkpoint and backup paths
    features   the phase-1 feature cache (pooled base features, computed once per image)
    feeds      per-replica batches for the loop, from images or cached features
    loop       compile, the train step (forward, loss, gradients, update), validate, fit
    callbacks  history.csv, best checkpoint, early stopping, the resumable backup
    posthoc    after training: temperature fitted on val and folded in, unknown detector
    outputs    model, SavedModel export, learning curves, summary.json, closing lines
    stage      train(cfg): set-up, phase 1, phase 2, outputs

Run-folder rules (which folder, resuming, summary.json) live in ``pipeline.runs``.
"""

from pipeline.training.outputs import TrainResult
from pipeline.training.stage import train

__all__ = ["TrainResult", "train"]
