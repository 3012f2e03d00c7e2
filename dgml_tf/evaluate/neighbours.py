"""Chunked exact nearest-neighbour search with deterministic tie-breaking.

The full query x gallery similarity matrix of Stanford Online Products (60k x 60k floats, 14 GB)
does not fit in memory, so queries are processed ``chunk_size`` rows at a time: one
(chunk, gallery) block of scores exists at once, and only its top ``k`` columns are kept.

Ranking order (documented contract, tested): by score descending, and among equal scores by
gallery index ascending, the order ``tf.math.top_k`` documents ("if two elements are equal, the
lower-index element appears first"). The selection is :func:`dgml_tf.distances.top_k_np`, the
exact top-k the index uses too, so ties are resolved the same way in every chunk and for every
chunk size.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from dgml_tf.distances import l2_normalize_np, top_k_np

METRICS = ("cosine", "euclidean")


@dataclasses.dataclass(frozen=True)
class NeighbourChunk:
    """Nearest neighbours of the queries ``start .. start + len(indices) - 1``.

    Attributes:
        start: index of the chunk's first query.
        indices: int64 (chunk, k) gallery indices, best first.
        scores: float32 (chunk, k) similarity scores (higher is closer), best first. For
            "cosine" the cosine similarity; for "euclidean" a score that orders like the negative
            distance (see :func:`similarity_scores`).
    """

    start: int
    indices: np.ndarray
    scores: np.ndarray


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    return metric


def prepare_embeddings(embeddings, metric: str, name: str = "embeddings") -> np.ndarray:
    """Validates a (N, D) array and returns it as float32, L2-normalised for "cosine".

    For "cosine" the whole vector is normalised (a concatenation of K unit group vectors has norm
    sqrt(K); normalising it does not change the ranking, only the score scale).
    """
    check_metric(metric)
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (num_items, dim), got shape {array.shape}; "
            "flatten group embeddings (N, K, d) to (N, K*d) or use evaluate_groups."
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}.")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; check the model's outputs.")
    if metric == "cosine":
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError(
                f"{name} has {int(np.sum(norms == 0))} all-zero rows, which have no direction for "
                "cosine similarity; use metric='euclidean' or fix the embeddings."
            )
        array = l2_normalize_np(array, axis=1, epsilon=0.0, dtype=None)  # no zero rows left
    return np.ascontiguousarray(array)


def similarity_scores(queries: tf.Tensor, gallery: tf.Tensor, metric: str,
                      gallery_sq_norms: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Scores (Q, G), higher = closer, for already prepared float32 inputs.

    "euclidean" returns 2 q.g - |g|^2 = |q|^2 - |q - g|^2: the per-query constant |q|^2 is left
    out because it cannot change a query's ranking, and dropping it keeps duplicate gallery items
    exactly tied.
    """
    dots = tf.linalg.matmul(queries, gallery, transpose_b=True)
    if metric == "cosine":
        return dots
    if gallery_sq_norms is None:
        gallery_sq_norms = tf.reduce_sum(tf.square(gallery), axis=1)
    return 2.0 * dots - gallery_sq_norms[tf.newaxis, :]


def iter_neighbour_chunks(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    exclude_self: bool = False,
    chunk_size: int = 1024,
) -> Iterator[NeighbourChunk]:
    """Yields the ``k`` nearest gallery items of each query, ``chunk_size`` queries at a time.

    Peak extra memory is about ``chunk_size * len(gallery) * 4`` bytes (one score block).

    Args:
        queries: float32 (Q, D), prepared with :func:`prepare_embeddings`.
        gallery: float32 (G, D), prepared the same way.
        k: neighbours per query; clamped to the number of candidates (G, or G - 1 when
            ``exclude_self``).
        metric: "cosine" or "euclidean".
        exclude_self: queries are the gallery itself (Q == G, same order) and query i must not
            retrieve gallery item i.
        chunk_size: queries per block.

    Example:
        >>> x = prepare_embeddings(np.eye(3), "cosine")
        >>> [c.indices.tolist() for c in iter_neighbour_chunks(x, x, 1, exclude_self=True)]
        [[[1], [0], [0]]]
    """
    check_metric(metric)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if exclude_self and len(queries) != len(gallery):
        raise ValueError(
            "exclude_self=True needs queries and gallery to be the same items "
            f"(got {len(queries)} queries and {len(gallery)} gallery items)."
        )
    candidates = len(gallery) - (1 if exclude_self else 0)
    if candidates < 1:
        raise ValueError("The gallery has no candidate items to retrieve (need at least 2 items "
                         "for self-retrieval, 1 for query-vs-gallery).")
    k = int(min(k, candidates))
    gallery_t = tf.constant(gallery)
    sq_norms = tf.reduce_sum(tf.square(gallery_t), axis=1) if metric == "euclidean" else None
    for start in range(0, len(queries), int(chunk_size)):
        stop = min(start + int(chunk_size), len(queries))
        scores = similarity_scores(tf.constant(queries[start:stop]), gallery_t, metric, sq_norms)
        if exclude_self:
            rows = tf.range(stop - start)
            own = tf.stack([rows, rows + start], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, own, tf.fill([stop - start], tf.constant(-np.inf, tf.float32)))
        indices, values = top_k_np(scores.numpy(), k)
        yield NeighbourChunk(start, indices, values)


def nearest_neighbours(
    queries,
    gallery=None,
    k: int = 1,
    *,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every query as full (Q, k) arrays.

    With ``gallery=None`` the queries are searched against themselves, each query excluded.
    Ranking: score descending, ties by gallery index ascending.

    Args:
        queries: (Q, D) array-like.
        gallery: (G, D) array-like, or None for self-retrieval.
        k: neighbours per query (clamped to the number of candidates).
        metric: "cosine" (L2-normalised dot product) or "euclidean".
        chunk_size: queries per block (bounds memory).

    Returns:
        (indices int64 (Q, k), scores float32 (Q, k)).

    Example:
        >>> idx, _ = nearest_neighbours(np.array([[1., 0.], [0.9, 0.1], [0., 1.]]), k=1)
        >>> idx[:, 0].tolist()
        [1, 0, 1]
    """
    q = prepare_embeddings(queries, metric, "queries")
    g = q if gallery is None else prepare_embeddings(gallery, metric, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but gallery {g.shape[1]}.")
    chunks = list(iter_neighbour_chunks(q, g, k, metric=metric, exclude_self=gallery is None,
                                        chunk_size=chunk_size))
    return (np.concatenate([c.indices for c in chunks]),
            np.concatenate([c.scores for c in chunks]))
