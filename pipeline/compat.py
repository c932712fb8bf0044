"""Every use of Keras's and TensorFlow's private API, in one place.

Each function below names the private attribute it touches and the upstream issue or
change that explains why no public API does the job. ``PRIVATE_API`` lists them all, and
tests/test_compat.py checks each on real objects, so a Keras or TensorFlow upgrade that
removes one fails that test by name instead of breaking a training run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.files import atomic_path, write_json

# (what owns it, attribute): checked by tests/test_compat.py on real objects.
PRIVATE_API = (
    ("keras.Model", "_initial_epoch"),
    ("keras.optimizers.Optimizer(use_ema=True)", "_trainable_variables"),
    ("keras.optimizers.Optimizer(use_ema=True)", "_model_variables_moving_average"),
    ("keras.callbacks.BackupAndRestore", "_save_model"),
    ("keras.callbacks.BackupAndRestore", "_load_model"),
    ("keras.callbacks.BackupAndRestore", "_weights_path"),
    ("keras.callbacks.BackupAndRestore", "_training_metadata_path"),
    ("keras.callbacks.BackupAndRestore", "_current_epoch"),
    ("keras.callbacks.BackupAndRestore", "_last_batch_seen"),
    ("keras.Model (functional)", "_nodes_by_depth"),
    ("keras.Sequential", "_functional"),
    ("tensorflow.python.framework.config", "is_op_determinism_enabled"),
    ("tensorflow.python.framework.config", "disable_op_determinism"),
    ("tensorflow.python.util._pywrap_util_port", "IsMklEnabled"),
)


# ----------------------------------------------------------------------------- resuming

# Model.fit reads the epoch that BackupAndRestore restored from ``model._initial_epoch``
# (set in its on_train_begin); a custom loop driving the same callback must read it there
# too. keras-team/keras#19179 shows the hand-off; there is no public accessor.


def reset_initial_epoch(model: keras.Model) -> None:
    """Before on_train_begin: no restored epoch yet (as Model.fit does)."""
    model._initial_epoch = None


def initial_epoch(model: keras.Model) -> int:
    """After on_train_begin: the epoch a BackupAndRestore callback restored, else 0."""
    return model._initial_epoch or 0


class StatefulBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, written atomically, that also carries other callbacks'
    state (early-stopping patience, best values, the history so far) across a restart.

    Keras restores the weights (the optimizer's included) and the epoch; alone it would
    restart early stopping's patience and forget the best value seen before the restart.
    Keras offers no hook for extra state, so this overrides its private ``_save_model`` and
    ``_load_model`` (keras/src/callbacks/backup_and_restore.py).
    """

    def __init__(
        self,
        backup_dir: Path,
        tracked: Sequence[keras.callbacks.Callback],
        fields: Callable[[keras.callbacks.Callback], tuple[str, ...]],
    ):
        # The caller deletes the backup once the phase is marked finished.
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.tracked, self.fields = list(tracked), fields

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        state = [{k: _plain(getattr(cb, k)) for k in self.fields(cb)} for cb in self.tracked]
        write_json(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen, "callbacks": state},
        )

    def _load_model(self):
        super()._load_model()
        path = Path(self._training_metadata_path)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8")).get("callbacks", [])
            for callback, state in zip(self.tracked, saved):
                for key, value in state.items():
                    setattr(callback, key, value)


def backup_saved(backup_dir: Path) -> bool:
    """Whether a BackupAndRestore in ``backup_dir`` has saved an epoch to resume from.

    Keras has no public test for a usable backup; the callback's metadata file (its name
    private, in ``_training_metadata_path``) is written after the weights, so its presence
    means a whole epoch was saved."""
    callback = keras.callbacks.BackupAndRestore(str(backup_dir))
    return Path(callback._training_metadata_path).is_file()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- weight averaging


def ema_pairs(optimizer: keras.optimizers.Optimizer) -> Iterator[tuple[Any, Any]]:
    """(trained variable, its moving average) for an optimizer with ``use_ema``.

    keras.callbacks.SwapEMAWeights (keras-team/keras#18978) swaps them on
    ``on_test_begin``, which a custom loop with its own evaluation never calls; the pairs
    it swaps are only reachable through these private lists.
    """
    return zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)


# ----------------------------------------------------------------------------- layer graphs

# Keras 3 has no public way to walk a functional model's graph: the maintainers point to
# the private node structure (keras-team/keras#19278).


def functional_graph(model: Any) -> Any | None:
    """The functional graph of a model (a Sequential keeps a functional twin), or None
    for a subclassed model, which has no graph."""
    graph = getattr(model, "_functional", None) or model
    return graph if hasattr(graph, "_nodes_by_depth") else None


def nodes_by_depth(graph: Any) -> dict[int, list[Any]]:
    """The graph's nodes keyed by depth (the output is depth 0)."""
    return graph._nodes_by_depth


# ----------------------------------------------------------------------------- determinism


def op_determinism() -> tuple[Callable[[], bool], Callable[[], None]]:
    """(is enabled, disable): TensorFlow exports only the switch on
    (tf.config.experimental.enable_op_determinism); the stage turns it off again so that
    it leaves the process as it found it. The RFC (tensorflow/community#346) defines no
    public way back; TensorFlow's own module has it."""
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled, tf_config.disable_op_determinism


# ----------------------------------------------------------------------------- CPU kernels


def onednn_enabled() -> bool:
    """Whether this process runs TensorFlow's oneDNN CPU kernels in place of its own (Eigen).

    TensorFlow decides at start: TF_ENABLE_ONEDNN_OPTS when set, else on by default where
    the CPU has deep-learning instructions (AVX512-VNNI, AVX-VNNI, BF16, AMX). The kernels
    allocate differently (oneDNN's convolution backward keeps no im2col buffer), so the
    memory estimate needs to know. No public API says which (the startup log line does);
    TensorFlow's own tests read this one."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
