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
      :class:`dgml_tf.training.custom_loop.CustomLoopTrainer`: on TF 2.20 / Keras 3.15
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
