"""L2 normalisation, pairwise distances and the exact top-k ranking rule: their one home.

Two families, the same formulas:

- Keras ops (``l2_normalize``, ``cosine_similarity_matrix``, ``unit_squared_distance_matrix``,
  ``squared_euclidean``, ``safe_sqrt``), for the layers, losses and miners; they run on the
  TensorFlow, JAX and torch backends.
- NumPy (``l2_normalize_np``, ``top_k_np``), for evaluation, indexing and interpretation.

Keras is imported inside the Keras-op functions: importing Keras with its TensorFlow backend
imports TensorFlow, and the NumPy half must stay importable without it (``dgml_tf.index`` is
imported by CLIs before they configure TensorFlow, and by processes that never load it).

Two L2 normalisations exist on purpose, selected by ``clamp`` (both keep a zero vector zero):

- ``"inverse_norm"`` is ``keras.ops.normalize``: ``x * min(rsqrt(sum x^2), 1/eps)``;
- ``"squared_norm"`` is ``x * rsqrt(max(sum x^2, eps))`` (what ``tf.math.l2_normalize`` does).

They differ only for vectors of norm below ``sqrt(eps)``; each caller keeps the one it was
trained and evaluated with, so no number changes.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

# Below this squared distance the gradient of sqrt explodes; distances are floored at 1e-6.
_MIN_SQUARED_DISTANCE = 1e-12
_CLAMPS = ("inverse_norm", "squared_norm")


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12, *, clamp: str = "inverse_norm",
                 compute_dtype: Optional[str] = None, output_dtype: Optional[str] = None):
    """Unit vectors along ``axis`` (zero vectors stay zero), with Keras ops.

    Args:
        x: a tensor (any backend) or array.
        axis: the axis to normalise.
        epsilon: the clamp (see the module docstring).
        clamp: ``"inverse_norm"`` (``keras.ops.normalize``, the losses and miners) or
            ``"squared_norm"`` (rsqrt of the clamped squared norm, the heads).
        compute_dtype: cast ``x`` to this dtype first (the heads use ``"float32"``: under mixed
            precision the float16 sum of squares of a 170-dim vector loses too much precision).
        output_dtype: cast the result to this dtype; with ``compute_dtype`` it defaults to the
            dtype of ``x``.

    Returns:
        A tensor of the shape of ``x``.

    Example:
        >>> float(l2_normalize(np.array([[3.0, 4.0]], "float32"))[0, 0])
        0.6000000238418579
    """
    from keras import ops

    if clamp not in _CLAMPS:
        raise ValueError(f"clamp must be one of {_CLAMPS}, got {clamp!r}.")
    if output_dtype is None and compute_dtype is not None:
        import keras

        output_dtype = keras.backend.standardize_dtype(x.dtype)
    if compute_dtype is not None:
        x = ops.cast(x, compute_dtype)
    if clamp == "inverse_norm":
        unit = ops.normalize(x, axis=axis, order=2, epsilon=epsilon)
    else:
        squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
        unit = x * ops.rsqrt(ops.maximum(squared_norm, epsilon))
    return unit if output_dtype is None else ops.cast(unit, output_dtype)


def cosine_similarity_matrix(unit):
    """``(B, B)`` dot products of the rows of ``unit`` (cosines when the rows are unit vectors)."""
    from keras import ops

    return ops.matmul(unit, ops.transpose(unit))


def unit_squared_distance_matrix(unit):
    """Squared Euclidean distances ``(B, B)`` between unit vectors, from ``2 - 2 cos``.

    Example:
        >>> from keras import ops
        >>> d = unit_squared_distance_matrix(np.eye(2, dtype="float32"))
        >>> [round(float(v), 6) for v in ops.convert_to_numpy(d).ravel()]
        [0.0, 2.0, 2.0, 0.0]
    """
    from keras import ops

    return ops.maximum(2.0 - 2.0 * cosine_similarity_matrix(unit), 0.0)


def squared_euclidean(a, b, axis: int = -1):
    """Row-wise squared Euclidean distance ``sum((a - b)^2)`` along ``axis``."""
    from keras import ops

    return ops.sum(ops.square(a - b), axis)


def safe_sqrt(squared):
    """sqrt with a floored argument, so the gradient stays finite at zero distance."""
    from keras import ops

    return ops.sqrt(ops.maximum(squared, _MIN_SQUARED_DISTANCE))


def l2_normalize_np(x, axis: int = -1, epsilon: float = 1e-12,
                    dtype: Optional[type] = np.float32) -> np.ndarray:
    """Unit vectors along ``axis`` with NumPy: ``x / max(||x||, epsilon)``.

    Args:
        x: array-like.
        axis: the axis to normalise.
        epsilon: the floor of the norm, in the array's dtype (zero vectors stay zero).
            ``0.0`` divides by the exact norm (for callers that reject zero rows first).
        dtype: the dtype to compute in; None keeps the array's own.

    Example:
        >>> l2_normalize_np([[3.0, 4.0], [0.0, 0.0]]).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype)
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norms, x.dtype.type(epsilon))


def top_k_np(scores, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``scores``, by score descending, ties by lower
    column index: the order ``tf.math.top_k`` documents, computed exactly in NumPy.

    Ties are resolved exactly, also at the k-th place: of several columns with the k-th score,
    the lowest-indexed ones are kept (``argpartition`` alone picks arbitrary ones).

    Args:
        scores: (Q, N) array, higher is better.
        k: 1 <= k <= N.

    Returns:
        ``(indices int64 (Q, k), values (Q, k))``, best first.

    Example:
        >>> top_k_np(np.array([[1.0, 3.0, 3.0, 2.0]]), 2)[0].tolist()
        [[1, 2]]
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (num_queries, num_items) array, got {scores.shape}.")
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of items {n}, got {k}.")
    if k < n:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(n), scores.shape).copy()
    values = np.take_along_axis(scores, candidates, axis=1)
    if k < n:
        _keep_lowest_index_ties(scores, candidates, values, k)
    # Sort by score (descending), then by index for a deterministic order among ties.
    order = np.lexsort((candidates, -values), axis=1)
    return (np.take_along_axis(candidates, order, axis=1).astype(np.int64, copy=False),
            np.take_along_axis(values, order, axis=1))


def _keep_lowest_index_ties(scores: np.ndarray, candidates: np.ndarray, values: np.ndarray,
                            k: int) -> None:
    """Where more columns share the k-th score than fit, keeps the lowest-indexed (in place)."""
    kth = values.min(axis=1, keepdims=True)  # NaN rows compare unequal and are left alone
    rows = np.flatnonzero((scores == kth).sum(axis=1) > (values == kth).sum(axis=1))
    for row in rows:
        better = np.flatnonzero(scores[row] > kth[row])
        tied = np.flatnonzero(scores[row] == kth[row])[: k - len(better)]
        candidates[row] = np.concatenate([better, tied])
        values[row] = scores[row, candidates[row]]
