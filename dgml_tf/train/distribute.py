"""Chooses the tf.distribute strategy for the machine and cluster this process runs on."""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf


def num_workers_in_tf_config(tf_config: Optional[str] = None) -> int:
    """Returns the number of training workers (chief + workers) named by ``TF_CONFIG``.

    Args:
        tf_config: the JSON text; defaults to the ``TF_CONFIG`` environment variable.

    Returns:
        0 when there is no TF_CONFIG, else the number of "chief" and "worker" tasks.

    Raises:
        ValueError: if TF_CONFIG is not valid JSON or has no "cluster" mapping.
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return 0
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}); expected e.g. "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.'
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict):
        raise ValueError(
            'TF_CONFIG has no "cluster" mapping; expected '
            '{"cluster": {"worker": [...]}, "task": {...}}.'
        )
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def strategy_from_environment() -> tf.distribute.Strategy:
    """Returns the strategy that fits the environment.

    * ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker. Train it with
      :class:`dgml_tf.train.custom_loop.CustomLoopTrainer`: on TF 2.20 / Keras 3.15
      ``model.fit`` fails under this strategy. Create it at program start, before other TF ops.
    * ``MirroredStrategy`` over all GPUs when more than one GPU is visible.
    * the default (no-op) strategy otherwise.

    Several logical CPU devices do not trigger ``MirroredStrategy``: splitting a batch over CPU
    cores of one machine only adds overhead; construct ``tf.distribute.MirroredStrategy(devices)``
    explicitly for that (the tests do, to exercise the cross-replica code on CPU).

    Returns:
        a ``tf.distribute.Strategy``; use ``with strategy.scope():`` to build and compile models.

    Example:
        >>> strategy = strategy_from_environment()
        >>> with strategy.scope():
        ...     model = ...  # build and compile here
    """
    if num_workers_in_tf_config() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for strategies spanning several worker processes (``model.fit`` is broken there)."""
    extended = strategy.extended
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker strategy.

    As in Keras' multi-worker guide: the task of type "chief", or worker 0 when the cluster
    names no chief, writes the run's outputs; every other worker writes to a scratch copy.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_output_dir(strategy: tf.distribute.Strategy, output_dir: str) -> str:
    """``output_dir`` for the chief; ``<output_dir>/workers/<type><id>`` for other workers.

    Every worker runs the same steps (collectives need all of them) and saves the same files;
    only the chief's land in the run directory, so workers never overwrite each other.
    """
    if is_chief(strategy):
        return output_dir
    resolver = strategy.cluster_resolver
    return os.path.join(output_dir, "workers", f"{resolver.task_type}{resolver.task_id}")
