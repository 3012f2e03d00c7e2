"""L2 normalisation of the last axis, computed in float32.

Why a shared helper: every head returns unit vectors, and under mixed precision the sum of
squares of a 170-dim float16 vector loses enough precision to make norms visibly differ from 1.
"""

import keras
from keras import ops

_EPSILON = 1e-12


def unit_normalize(x, output_dtype=None):
    """Returns ``x / ||x||`` along the last axis, computed in float32.

    Args:
        x: a tensor of any float dtype.
        output_dtype: dtype of the result; defaults to the dtype of ``x``.
    """
    output_dtype = output_dtype or keras.backend.standardize_dtype(x.dtype)
    x32 = ops.cast(x, "float32")
    squared_norm = ops.sum(ops.square(x32), axis=-1, keepdims=True)
    # rsqrt of a clamped square norm: a zero vector stays zero instead of becoming NaN.
    normalized = x32 * ops.rsqrt(ops.maximum(squared_norm, _EPSILON))
    return ops.cast(normalized, output_dtype)
