"""pipeline.compat: every private Keras/TensorFlow attribute the pipeline relies on exists.

A Keras or TensorFlow upgrade that removes one fails here, naming it, rather than in the
middle of a training run.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.compat import (
    PRIVATE_API,
    StatefulBackup,
    backup_saved,
    ema_pairs,
    functional_graph,
)


def _owners(tmp_path) -> dict[str, object]:
    """A real object of each kind PRIVATE_API names, in the state the pipeline uses it."""
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build(functional.trainable_variables)
    functional.compile(optimizer, "mse")
    backup = StatefulBackup(tmp_path / "backup", [], lambda callback: ())
    backup.set_model(functional)
    functional.fit(np.zeros((2, 4)), np.zeros((2, 2)), epochs=1, verbose=0, callbacks=[backup])
    return {
        "keras.Model": functional,
        "keras.optimizers.Optimizer(use_ema=True)": optimizer,
        "keras.callbacks.BackupAndRestore": backup,
        "keras.Model (functional)": functional,
        "keras.Sequential": sequential,
        "tensorflow.python.framework.config": importlib.import_module(
            "tensorflow.python.framework.config"
        ),
        "tensorflow.python.util._pywrap_util_port": importlib.import_module(
            "tensorflow.python.util._pywrap_util_port"
        ),
    }


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    return _owners(tmp_path_factory.mktemp("compat"))


@pytest.mark.parametrize(("owner", "attribute"), PRIVATE_API, ids=[a for _, a in PRIVATE_API])
def test_private_attribute_still_exists(owners, owner, attribute):
    assert hasattr(owners[owner], attribute), (
        f"{owner}.{attribute} is gone in Keras {keras.__version__}: pipeline/compat.py relies "
        "on it; see the comment there for what it works around"
    )


def test_the_graph_and_average_helpers_read_real_objects(owners):
    assert functional_graph(owners["keras.Sequential"]) is not None
    assert functional_graph(keras.layers.Dense(2)) is None  # a plain layer has no graph
    optimizer = owners["keras.optimizers.Optimizer(use_ema=True)"]
    pairs = list(ema_pairs(optimizer))
    assert len(pairs) == 2 and all(v.shape == a.shape for v, a in pairs)


def test_a_saved_backup_is_told_from_an_empty_folder(owners, tmp_path):
    backup = owners["keras.callbacks.BackupAndRestore"]
    assert backup_saved(Path(backup.backup_dir))  # the fixture's fit saved one epoch
    assert not backup_saved(tmp_path)
