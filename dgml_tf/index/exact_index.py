"""Exact maximum-inner-product search: one matrix product and a partial sort per query block.

Always available (NumPy only) and the reference that ScaNN's recall is measured against.
"""

from __future__ import annotations

import numpy as np

from dgml_tf.distances import top_k_np


def exact_top_k(
    queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 1024
) -> tuple:
    """The ``k`` largest dot products of each query with ``database`` rows, best first.

    Args:
        queries: (Q, D) float32.
        database: (N, D) float32.
        k: 1 <= k <= N.
        block_size: queries per matrix product (bounds memory to block_size x N scores).

    Returns:
        ``(indices int64 (Q, k), scores float32 (Q, k))``; ties broken by the lower index
        (:func:`dgml_tf.distances.top_k_np`).
    """
    n = database.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the gallery size {n}, got {k}.")
    indices = np.empty((queries.shape[0], k), np.int64)
    scores = np.empty((queries.shape[0], k), np.float32)
    for start in range(0, queries.shape[0], block_size):
        block_indices, block_scores = top_k_np(queries[start : start + block_size] @ database.T, k)
        indices[start : start + block_size] = block_indices
        scores[start : start + block_size] = block_scores
    return indices, scores


class ExactSearcher:
    """Brute-force search over a fixed database.

    Args:
        database: (N, D) float32 rows (normalise them first for cosine similarity).

    Example:
        >>> searcher = ExactSearcher(np.eye(3, dtype=np.float32))
        >>> searcher.search(np.array([[0.0, 1.0, 0.0]], np.float32), 1)[0]
        array([[1]])
    """

    def __init__(self, database: np.ndarray):
        self.database = np.ascontiguousarray(database, np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple:
        return exact_top_k(np.asarray(queries, np.float32), self.database, k)
