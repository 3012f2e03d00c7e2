"""Seeds for reproducible training: per-step stateless seeds and global seeding.

Mining randomness (e.g. the distance-weighted negative sampler) must be

* identical on every replica within a step, because with cross-replica gathering each replica
  evaluates the loss on the same global batch and the gradient algebra assumes the same value;
* a pure function of the checkpointed state, so a run resumed from a checkpoint draws the same
  samples as an uninterrupted one.

Keying a stateless seed on ``(seed, optimizer.iterations)`` gives both: the iteration counter is
an optimizer variable (saved by ``save_weights``/``.keras``/BackupAndRestore) and is the same on
every replica. A ``tf.random.Generator`` created under a strategy would instead give each replica
its own stream.
"""

from __future__ import annotations

import random

import keras
from keras import ops


def step_seed(seed: int, step):
    """Returns the stateless-RNG seed for training step ``step``.

    Args:
        seed: the run's integer seed.
        step: the step counter (an int or scalar integer tensor, typically
            ``optimizer.iterations``).

    Returns:
        An integer tensor of shape (2,): int64 on TensorFlow (usable as the ``seed`` of
        ``tf.random.stateless_*`` ops), int32 on JAX without x64 (the seed taken modulo 2**31);
        the ``seed`` of :mod:`dgml_tf.miners.stateless_random` on every backend.

    Example:
        >>> s = step_seed(7, 3)
        >>> tf.random.stateless_uniform((), seed=s).numpy() == (
        ...     tf.random.stateless_uniform((), seed=step_seed(7, 3)).numpy())
        True
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    dtype = "int64"
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            dtype = "int32"  # JAX without x64 has no int64; key data is 32-bit anyway
            if isinstance(seed, int):
                seed = seed % 2**31
    return ops.stack([ops.cast(seed, dtype), ops.cast(step, dtype)])


def new_seed() -> int:
    """Draws a fresh seed for runs that were not given one (kept in configs for resumption)."""
    return random.SystemRandom().randrange(1, 2**31 - 1)


def set_global_seed(seed: int, op_determinism: bool = False) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras, optionally making TF ops deterministic.

    Args:
        seed: integer seed.
        op_determinism: on TensorFlow, also call
            ``tf.config.experimental.enable_op_determinism()`` so that reductions (e.g.
            gradients of gathers) are bitwise reproducible (slower; Keras then also disables
            XLA auto-compilation); on PyTorch, ``torch.use_deterministic_algorithms(True)``.
            JAX needs nothing (its CPU reductions are deterministic).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    keras.utils.set_random_seed(seed)
    if op_determinism and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif op_determinism and keras.backend.backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
