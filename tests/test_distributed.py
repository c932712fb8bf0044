"""pipeline.training (runtime, feeds, loop) on this CPU: two logical devices under
MirroredStrategy, two workers on localhost under MultiWorkerMirroredStrategy, mixed
precision, XLA and the NaN guard.

Strategies need a fresh process (logical devices and collectives are fixed once TensorFlow
starts), so those tests run the real stage in subprocesses with a hard timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, load_config
from pipeline.summary import read_summary
from pipeline.training import train
from pipeline.training.feeds import eval_feed, train_feed
from pipeline.training.loop import NonFiniteLossError, fit
from pipeline.training.runtime import select_strategy, strategy_name
from tests.support import REPO, make_tiny_data

MOBILENET = ["model.backbone=mobilenet", "model.alpha=0.25", "input.image_size=64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, flowers_mini):
    return make_tiny_data(flowers_mini, tmp_path_factory.mktemp("tiny_dist"))


def run_python(code: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def model_weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path).get_weights()


def test_auto_strategy_on_one_cpu_is_the_default_one(tiny, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy_name(select_strategy(tiny.cfg())) == "default"
    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG"):
        select_strategy(tiny.cfg("train.strategy=multi_worker", "train.run_name=x"))


@pytest.mark.slow  # about 65 s on 2 cores: two training runs in subprocesses
def test_mirrored_on_two_logical_cpus_matches_one_device(tiny):
    """Two replicas of 4 images and one device with 8 take the same steps (dropout off),
    weight averaging (train.ema) included."""
    overrides = [
        *tiny.overrides,
        *MOBILENET,
        "model.dropout=0",
        "train.ema=0.9",
        "train.head_epochs=2",
        "train.fine_tune_epochs=1",
        "train.fine_tune_lr=1e-3",
    ]
    code = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from pipeline.config import load_config
        from pipeline.training import train
        base = {overrides!r}
        one = train(load_config(None, base + ["train.run_name=one", "input.batch_size=8"]))
        two = train(load_config(None, base + ["train.run_name=two", "input.batch_size=4",
                                              "train.strategy=mirrored"]))
        print("RESULT", json.dumps([one.summary.to_dict(), two.summary.to_dict()]))
    """)
    done = run_python(code, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(done.stdout.split("RESULT", 1)[1])
    assert (one["strategy"], one["replicas"]) == ("default", 1)
    assert (two["strategy"], two["replicas"], two["global_batch"]) == ("mirrored", 2, 8)
    for phase in ("1", "2"):
        assert one["phases"][phase]["best_val_loss"] == pytest.approx(
            two["phases"][phase]["best_val_loss"], rel=1e-4
        )
    for a, b in zip(
        model_weights(Path(one["run_dir"]) / "model.keras"),
        model_weights(Path(two["run_dir"]) / "model.keras"),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert (Path(two["run_dir"]) / "saved_model").is_dir()


def averaging_problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]


def dense_model(use_ema: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    optimizer = keras.optimizers.Adam(0.05, use_ema=use_ema, ema_momentum=0.8)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def in_order_feeds(x: np.ndarray, y: np.ndarray):
    def batches(indices, batch, *_):
        return tf.data.Dataset.from_tensor_slices((x[indices], y[indices])).batch(batch)

    strategy = tf.distribute.get_strategy()
    return train_feed(len(x), 16, batches), eval_feed(len(x), 16, strategy, batches), strategy


def test_weight_averaging_validates_and_keeps_what_model_fit_ends_with():
    """With use_ema, Keras's model.fit ends on the moving average of the weights; the custom
    loop must end on the same weights and validate them, not the last step's."""
    x, y = averaging_problem()
    train_data, val_data, strategy = in_order_feeds(x, y)
    reference = dense_model(use_ema=True)
    reference.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    averaged, last = dense_model(use_ema=True), dense_model(use_ema=False)
    logs = [fit(m, train_data, val_data, 3, [], strategy, verbose=0) for m in (averaged, last)]
    for a, b in zip(averaged.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged.get_weights()[0], last.get_weights()[0], atol=1e-3)
    final_loss = keras.ops.convert_to_numpy(
        keras.losses.categorical_crossentropy(y, averaged.predict(x, verbose=0))
    ).mean()
    assert logs[0].history["val_loss"][-1] == pytest.approx(final_loss, rel=1e-5)


def test_weight_averaging_resumes_from_a_backup_as_if_never_stopped(tmp_path):
    """A backup holds the averaged weights in the model and the trained ones in the
    optimizer's slots; a resumed run must swap them back before its next epoch."""
    x, y = averaging_problem()
    train_data, val_data, strategy = in_order_feeds(x, y)

    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)

    whole = fit(dense_model(True), train_data, val_data, 4, [], strategy, verbose=0)
    fit(dense_model(True), train_data, val_data, 2, [backup()], strategy, verbose=0)
    resumed_model = dense_model(True)
    resumed = fit(resumed_model, train_data, val_data, 4, [backup()], strategy, verbose=0)
    assert len(resumed.history["val_loss"]) == 2  # epochs 3 and 4 only
    np.testing.assert_allclose(
        resumed.history["val_loss"], whole.history["val_loss"][2:], rtol=1e-5
    )
    for a, b in zip(resumed_model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_workers_on_localhost_end_with_identical_weights(tiny):
    """MultiWorkerMirroredStrategy from TF_CONFIG, two processes, through
    `python -m pipeline train`: the chief writes the run, worker 1 its own copy under workers/."""
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    overrides = [
        *tiny.overrides,
        *MOBILENET,
        "train.head_epochs=2",
        "train.fine_tune_epochs=2",
        "train.fine_tune_lr=1e-3",
        "input.batch_size=4",
        "train.run_name=workers",
    ]
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline", "train", *overrides],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    run_dir = tiny.root / "models" / "workers"
    summary = read_summary(run_dir)
    assert (summary.strategy, summary.workers, summary.replicas) == ("multi_worker", 2, 2)
    assert summary.global_batch == 8
    chief = model_weights(run_dir / "model.keras")
    other = model_weights(run_dir / "workers" / "worker-1" / "model.keras")
    assert len(chief) == len(other)
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    assert (run_dir / "saved_model").is_dir()
    assert not (run_dir / "workers" / "worker-1" / "saved_model").exists()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_on_a_tiny_model(tiny, precision):
    result = train(
        tiny.cfg(
            "model.backbone=small_cnn",
            "model.cnn_width=8",
            "input.image_size=32",
            "train.head_epochs=1",
            "train.fine_tune_epochs=0",
            f"train.precision={precision}",
            f"train.run_name=precision-{precision}",
        )
    )
    assert result.summary.precision == precision
    assert np.isfinite(result.summary.final.val_loss)
    model = keras.models.load_model(result.run_dir / "model.keras")
    assert model.get_layer("base").layers[1].compute_dtype == precision.split("_")[1]
    assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == "float32"
    optimizer = result.summary.phases[1].optimizer
    assert optimizer == ("LossScaleOptimizer" if precision == "mixed_float16" else "Adam")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


def test_xla_on_the_cached_head(tiny):
    result = train(
        tiny.cfg(
            *MOBILENET,
            "train.head_epochs=2",
            "train.fine_tune_epochs=0",
            "train.xla=true",
            "train.head_fit=gradient",
            "train.run_name=xla",
        )
    )
    assert result.summary.xla is True
    assert np.isfinite(result.summary.final.val_loss)


def test_tensorboard_logs_hold_each_epochs_losses(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny.cfg(
        *MOBILENET,
        "train.head_epochs=2",
        "train.fine_tune_epochs=0",
        "train.tensorboard=true",
        "train.head_fit=gradient",
        "train.run_name=tensorboard",
    )
    result = train(cfg)
    for side in ("train", "validation"):
        events = EventAccumulator(str(result.run_dir / "logs" / "phase1" / side)).Reload()
        tags = events.Tags()["tensors"] + events.Tags()["scalars"]
        assert "epoch_loss" in tags, (side, tags)


def test_a_non_finite_loss_stops_training_with_a_clear_message(tiny):
    cfg = tiny.cfg(
        *MOBILENET,
        "train.head_epochs=3",
        "train.fine_tune_epochs=0",
        "train.head_lr=1e38",
        "train.head_fit=gradient",
        "train.run_name=nan",
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "NaN or infinite in phase 1" in message
    assert "resumes from there" in message and "PRECISION=float32" in message
    assert not (tiny.root / "models" / "nan" / "summary.json").exists()


def test_multi_worker_without_a_run_name_is_refused(tiny, monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}),
    )
    with pytest.raises(ConfigError, match=r"needs train\.run_name"):
        train(load_config(None, [*tiny.overrides, *MOBILENET]))


def test_xla_over_replicas_refuses_a_network_trained_from_scratch():
    """TensorFlow fails inside the step (merge_call in an XLA function) when BatchNorm
    updates over several replicas; the run is refused before any work instead."""
    from pipeline.training.runtime import check_xla_replicas

    check_xla_replicas(xla=True, replicas=1, pretrained=False)  # one device
    check_xla_replicas(xla=True, replicas=2, pretrained=True)  # base in inference mode
    check_xla_replicas(xla=False, replicas=2, pretrained=False)
    with pytest.raises(ConfigError, match="use XLA=false, or one device"):
        check_xla_replicas(xla=True, replicas=2, pretrained=False)
