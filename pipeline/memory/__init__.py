"""Memory and compute estimates: what fits before training, what it costs, what to change.

Read in this order; each module depends only on those above it:

    spec.py         the layer-spec grammar ("conv3x3s2same:100,...") -> ``Layer`` rows
    liveness.py     which tensors are alive when: inference/training peaks, FLOPs, checkpointing
    allocator.py    TensorFlow's BFC allocator: the chunks a step's allocations really hold
    keras_graph.py  a Keras model -> ``Layer`` rows
    estimate.py     the arithmetic: bytes for inference and training, max batch, remedies
    record.py       ``MemoryEstimate``, ``RunMemory``: what train records for evaluate/report
    classifier.py   the configured classifier: rows per training phase, ``estimate_for_run``
    render.py       the Markdown report
    stage.py        ``estimate_memory``, the ``memory`` stage

Importing this package does not import Keras or TensorFlow; building a model does.
"""

from pipeline.memory.classifier import estimate_for_run, model_phases, run_memory_estimate
from pipeline.memory.estimate import (
    CPU_OVERHEAD,
    estimate_layers,
    max_batch,
    rank_remedies,
    realistic_training,
    textbook_training,
)
from pipeline.memory.record import MemoryEstimate, RunMemory, phases_run
from pipeline.memory.stage import estimate_memory

__all__ = [
    "CPU_OVERHEAD",
    "MemoryEstimate",
    "RunMemory",
    "estimate_for_run",
    "estimate_layers",
    "estimate_memory",
    "max_batch",
    "model_phases",
    "phases_run",
    "rank_remedies",
    "realistic_training",
    "run_memory_estimate",
    "textbook_training",
]
