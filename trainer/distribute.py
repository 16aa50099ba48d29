"""Chooses the tf.distribute strategy a training run uses.

One host: `MirroredStrategy` over its GPUs, or over its logical CPU devices
when it has none (how the tests exercise it). Several hosts:
`MultiWorkerMirroredStrategy`, which reads the cluster from TF_CONFIG and
must be created before TensorFlow runs any other op in the process.
"""

import functools
import logging

import tensorflow as tf

_log = logging.getLogger(__name__)


@functools.cache
def strategy_for(distribution: str) -> tf.distribute.Strategy:
    """The strategy for a `TrainConfig.distribution` value.

    Cached, because TensorFlow allows one multi-worker strategy per process.

    Raises:
      ValueError: an unknown value.
    """
    if distribution == "none":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif distribution == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ValueError(
            "distribution must be 'none', 'mirrored' or 'multi_worker', got "
            f"{distribution!r}"
        )
    _log.info(
        "training with %s over %d replicas",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is the one that publishes: every worker trains,
    only the chief (or worker 0 when no chief is named) writes the version.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (
        not has_chief
        and resolver.task_type == "worker"
        and resolver.task_id == 0
    )
