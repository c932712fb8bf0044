"""Where training runs: the distribution strategy, the numeric precision, and their names.

``select_strategy`` picks one device, several GPUs (``MirroredStrategy``) or several
machines (``MultiWorkerMirroredStrategy``, from TF_CONFIG); ``select_precision`` sets
Keras's dtype policy. The rest describe what was chosen, for printing and summary.json.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from pipeline.config import Config, ConfigError, resolve_precision

# ----------------------------------------------------------------------------- strategy


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({exc}). Received: {text[:200]!r}"
        ) from None


def _cluster_tasks(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def multi_worker_requested(cfg: Config) -> bool:
    """Whether select_strategy will pick MultiWorkerMirroredStrategy (cheap: reads TF_CONFIG)."""
    name = cfg.train.strategy
    return name == "multi_worker" or (name == "auto" and _cluster_tasks(_tf_config()) > 1)


def select_strategy(cfg: Config) -> tf.distribute.Strategy:
    """auto: several machines (TF_CONFIG) > several GPUs > the default single device.

    Must run before any other TensorFlow work: MultiWorkerMirroredStrategy configures the
    runtime's collectives, which cannot change once TensorFlow has started.
    """
    name = cfg.train.strategy
    tf_config = _tf_config()
    if multi_worker_requested(cfg):
        if not tf_config.get("cluster"):
            raise ConfigError(
                "train.strategy=multi_worker needs TF_CONFIG (the cluster and this worker's "
                "task) in the environment of every worker; see docs/distributed.md, "
                "or use train.strategy=auto"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()  # before listing any device
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "mirrored":
        # Every GPU; without GPUs every logical CPU device (two of them in the tests).
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def check_xla_replicas(xla: bool, replicas: int, pretrained: bool) -> None:
    """XLA with several replicas cannot train a network whose BatchNorm updates: a mirrored
    variable's update needs a merge_call, which TensorFlow refuses inside an XLA function.
    A pretrained base runs in inference mode (no updates), so only from-scratch networks
    are refused, before any work starts."""
    if xla and replicas > 1 and not pretrained:
        raise ConfigError(
            f"train.xla=true with {replicas} replicas cannot train a network from scratch: "
            "TensorFlow cannot update its BatchNorm statistics across replicas inside XLA; "
            "use XLA=false, or one device (STRATEGY=default)"
        )


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """How many input pipelines (workers) feed the replicas: one per machine."""
    resolver = strategy.cluster_resolver
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, str]:
    """(is this the chief?, a name for this worker): the chief writes the run's outputs."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True, "chief"
    kind, index = resolver.task_type, int(resolver.task_id or 0)
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    chief = kind == "chief" or (kind == "worker" and index == 0 and not has_chief)
    return chief, f"{kind}-{index}"


def local_gpus() -> list[tf.config.PhysicalDevice]:
    """This machine's GPUs as TensorFlow sees them: the one test of "is there a GPU"."""
    return tf.config.list_physical_devices("GPU")


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    gpus = local_gpus()
    kind = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
    replicas = strategy.num_replicas_in_sync
    workers = input_pipelines(strategy)
    where = f", {workers} workers" if workers > 1 else ""
    return f"{kind}; strategy {strategy_name(strategy)}, {replicas} replica(s){where}"


# ----------------------------------------------------------------------------- precision


def select_precision(cfg: Config) -> str:
    """Sets Keras's global dtype policy to train.precision (``config.resolve_precision``) and
    returns its name; the caller restores the previous policy when done. Under
    mixed_float16 (float32 variables, float16 maths), ``model.compile`` wraps the optimizer
    in a LossScaleOptimizer.
    """
    precision = resolve_precision(cfg.train.precision, gpu=bool(local_gpus()))
    keras.mixed_precision.set_global_policy(precision)
    return precision
