"""Stateless random numbers keyed on a seed tensor, on every Keras backend.

``keras.random`` takes a ``SeedGenerator`` or a Python int, not a seed *tensor*; the miners need
draws that are a pure function of a per-step seed tensor (``dgml_tf.train.step_seed``), also
inside a compiled step. Each backend gets its own counter-based generator:

* TensorFlow: ``tf.random.stateless_uniform`` / ``tf.random.experimental.stateless_split`` (the
  exact ops dgml_tf always used, so TF draws are bitwise what they were);
* JAX: ``jax.random`` (threefry) with the seed as raw key data (traceable under ``jit``);
* PyTorch and NumPy: a generator seeded from the seed's two integers (eager only; torch's
  ``fit`` runs eagerly).

The draws differ between backends (each backend's RNG), but on one backend the same seed gives
the same numbers, which is what makes a resumed run re-draw exactly.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_SUPPORTED = ("tensorflow", "jax", "torch", "numpy")


def _backend() -> str:
    name = keras.backend.backend()
    if name not in _SUPPORTED:
        raise NotImplementedError(
            f"dgml_tf stateless sampling supports the Keras backends {_SUPPORTED}; "
            f"KERAS_BACKEND is {name!r}."
        )
    return name


def _host_seed_int(seed) -> int:
    """The two seed integers folded into one 64-bit generator seed (eager backends)."""
    first, second = (int(v) for v in np.asarray(ops.convert_to_numpy(seed)).reshape(-1)[:2])
    return ((first & 0xFFFFFFFF) << 32) | (second & 0xFFFFFFFF)


def split_seed(seed, num: int) -> list:
    """Splits a stateless seed ``(2,)`` into ``num`` independent seeds ``(2,)``.

    Args:
        seed: int tensor or array of shape (2,).
        num: how many seeds to derive.

    Returns:
        A list of ``num`` seed tensors of shape (2,) (int64 on TF, uint32 key data on JAX).

    Example:
        >>> first, second = split_seed(np.array([7, 3]), 2)
    """
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        key = jax.random.wrap_key_data(jnp.asarray(seed).astype(jnp.uint32), impl="threefry2x32")
        data = jax.random.key_data(jax.random.split(key, num))
        return [data[i] for i in range(num)]
    rng = np.random.Generator(np.random.Philox(_host_seed_int(seed)))
    values = rng.integers(0, 2**31 - 1, size=(num, 2), dtype=np.int64)
    return [ops.convert_to_tensor(values[i]) for i in range(num)]


def stateless_uniform(shape, seed, minval: float = 0.0, maxval: float = 1.0):
    """float32 uniform numbers in ``[minval, maxval)``, a pure function of ``seed``.

    Args:
        shape: output shape (may be a dynamic shape tensor on TF).
        seed: a seed from :func:`split_seed` or ``dgml_tf.train.step_seed``.
        minval, maxval: the range.

    Example:
        >>> u = stateless_uniform((2, 3), np.array([1, 2]), minval=1e-20)
    """
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        key = jax.random.wrap_key_data(jnp.asarray(seed).astype(jnp.uint32), impl="threefry2x32")
        return jax.random.uniform(key, tuple(shape), jnp.float32, minval, maxval)
    if backend == "torch":
        import torch

        generator = torch.Generator(device="cpu").manual_seed(_host_seed_int(seed))
        values = torch.rand(tuple(int(s) for s in shape), generator=generator)
        values = torch.clamp(minval + (maxval - minval) * values, min=minval)
        return ops.convert_to_tensor(values)  # moves it to Keras' device
    rng = np.random.Generator(np.random.Philox(_host_seed_int(seed)))
    values = rng.uniform(minval, maxval, size=tuple(int(s) for s in shape)).astype(np.float32)
    return ops.convert_to_tensor(np.maximum(values, np.float32(minval)))
