"""Retrieval evaluation: Recall@K, MAP@R, R-precision and k-means NMI in bounded memory.

Two protocols:

* self-retrieval (CUB, Cars196, SOP): every test item queries all the others, itself excluded;
  R = size of the query's class - 1.
* query-vs-gallery (In-Shop): queries search a separate gallery, nothing is excluded;
  R = number of gallery items of the query's class.

Recall@K averages over all queries (a query whose class has no other item can never hit).
MAP@R and R-precision average over the queries with R >= 1; the others are counted in
``"num_queries_without_relevant"``. Neighbours are ranked by similarity descending, ties by
gallery index ascending (see :mod:`dgml_tf.evaluate.neighbours`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import numpy as np

from dgml_tf.evaluate.clustering import kmeans_nmi
from dgml_tf.evaluate.neighbours import iter_neighbour_chunks, prepare_embeddings
from dgml_tf.evaluate.ranking_metrics import average_precision_at_r, r_precision, recall_hits
from dgml_tf.evaluate.recall_ks import DEFAULT_RECALL_KS

DEFAULT_CHUNK_SIZE = 1024


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name} must be a 1-D array with one label per embedding ({n}), got "
                         f"shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}.")
    return labels.astype(np.int64, copy=False)


def _check_ks(recall_ks: Sequence[int]) -> tuple:
    ks = tuple(recall_ks)
    if not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
        raise ValueError(f"recall_ks must be positive integers, got {recall_ks!r}.")
    return tuple(sorted(set(int(k) for k in ks)))


def _count_in(gallery_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """For each query label, how many gallery items carry it."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    return np.where(classes[pos] == query_labels, counts[pos], 0)


def evaluate_retrieval(
    embeddings,
    labels,
    query_embeddings=None,
    query_labels=None,
    *,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    compute_nmi: bool = True,
    compute_map_at_r: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metric: str = "cosine",
    nmi_n_init: int = 1,
    seed: int = 0,
) -> Dict[str, float]:
    """Retrieval metrics of embeddings, from NumPy (or any array-like) inputs.

    Args:
        embeddings: (N, D) test embeddings; the gallery when ``query_embeddings`` is given.
        labels: (N,) integer classes of ``embeddings``.
        query_embeddings: optional (Q, D) queries searched against ``embeddings`` (In-Shop).
            None means self-retrieval, each query excluded from its own results.
        query_labels: (Q,) classes of the queries; required with ``query_embeddings``.
        recall_ks: the K of Recall@K (see :func:`recall_ks_for`). A K above the gallery size
            uses the whole gallery.
        compute_nmi: also cluster with k-means (needs scikit-learn). With a query set, queries
            and gallery are clustered together, with as many clusters as their distinct classes.
        compute_map_at_r: also compute MAP@R and R-precision (retrieves max R neighbours).
        chunk_size: queries per block; memory is about ``chunk_size * N * 4`` bytes.
        metric: "cosine" (the whole vector L2-normalised) or "euclidean" (raw vectors).
        nmi_n_init: k-means restarts.
        seed: k-means seed.

    Returns:
        ``{"recall@K": ..., "map@r": ..., "r_precision": ..., "nmi": ..., "num_queries": ...,
        "num_queries_without_relevant": ...}``; metrics are fractions in [0, 1].

    Example:
        >>> x = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
        >>> evaluate_retrieval(x, [0, 0, 1, 1], recall_ks=(1,), compute_nmi=False)["recall@1"]
        1.0
    """
    ks = _check_ks(recall_ks)
    scores = _score_queries(embeddings, labels, query_embeddings, query_labels, ks=ks,
                            compute_map_at_r=compute_map_at_r, chunk_size=chunk_size,
                            metric=metric)
    results = _aggregate(scores, ks, compute_map_at_r, np.ones(len(scores.labels), bool))
    if compute_nmi:
        if scores.self_retrieval:
            points, classes = scores.gallery, scores.gallery_labels
        else:
            points = np.concatenate([scores.queries, scores.gallery])
            classes = np.concatenate([scores.labels, scores.gallery_labels])
        results["nmi"] = kmeans_nmi(points, classes, n_init=nmi_n_init, seed=seed)
    return results


def evaluate_retrieval_per_class(
    embeddings,
    labels,
    query_embeddings=None,
    query_labels=None,
    *,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    compute_map_at_r: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metric: str = "cosine",
) -> Dict[int, Dict[str, float]]:
    """:func:`evaluate_retrieval`'s Recall@K, MAP@R and R-precision averaged per query class.

    The same protocol and ranking; each class's row averages over that class's queries only, so
    a class the embedding fails on is visible instead of hidden in the mean. (NMI is a property
    of the whole clustering and has no per-class value.)

    Returns:
        ``{label: {"recall@K": ..., "map@r": ..., "r_precision": ..., "num_queries": ...,
        "num_queries_without_relevant": ...}}`` ordered by label; the overall metrics are the
        query-count-weighted means of these rows. Pass it to :func:`format_table` for a table.

    Example:
        >>> x = np.array([[1., 0.], [.9, .1], [0., 1.], [.7, .3]])
        >>> rows = evaluate_retrieval_per_class(x, [0, 0, 1, 1], recall_ks=(1,))
        >>> rows[0]["recall@1"], rows[1]["recall@1"]
        (1.0, 0.5)
    """
    ks = _check_ks(recall_ks)
    scores = _score_queries(embeddings, labels, query_embeddings, query_labels, ks=ks,
                            compute_map_at_r=compute_map_at_r, chunk_size=chunk_size,
                            metric=metric)
    return {int(label): _aggregate(scores, ks, compute_map_at_r, scores.labels == label)
            for label in np.unique(scores.labels)}


@dataclasses.dataclass
class _QueryScores:
    """Per-query outcomes of one retrieval pass (what every aggregate is computed from)."""

    queries: np.ndarray
    labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    self_retrieval: bool
    relevant_counts: np.ndarray  # R of each query
    hits: np.ndarray  # (Q, len(ks)) bool: a relevant item within the top K
    average_precision: np.ndarray  # (Q,) AP@R, NaN where R = 0
    r_precision: np.ndarray  # (Q,) R-precision, NaN where R = 0


def _score_queries(embeddings, labels, query_embeddings, query_labels, *, ks: tuple,
                   compute_map_at_r: bool, chunk_size: int, metric: str) -> _QueryScores:
    gallery = prepare_embeddings(embeddings, metric, "embeddings")
    gallery_labels = _check_labels(labels, len(gallery), "labels")
    self_retrieval = query_embeddings is None
    if self_retrieval:
        if query_labels is not None:
            raise ValueError("query_labels given without query_embeddings; pass both or neither.")
        queries, q_labels = gallery, gallery_labels
        relevant_counts = _count_in(gallery_labels, q_labels) - 1
    else:
        if query_labels is None:
            raise ValueError("query_embeddings given without query_labels; pass both.")
        queries = prepare_embeddings(query_embeddings, metric, "query_embeddings")
        q_labels = _check_labels(query_labels, len(queries), "query_labels")
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(f"query_embeddings have dimension {queries.shape[1]} but embeddings "
                             f"{gallery.shape[1]}.")
        relevant_counts = _count_in(gallery_labels, q_labels)

    depth = max(ks)
    if compute_map_at_r and relevant_counts.size:
        depth = max(depth, int(relevant_counts.max()))
    hits = np.zeros((len(queries), len(ks)), dtype=bool)
    ap = np.full(len(queries), np.nan)
    rp = np.full(len(queries), np.nan)
    for chunk in iter_neighbour_chunks(queries, gallery, depth, metric=metric,
                                       exclude_self=self_retrieval, chunk_size=chunk_size):
        rows = np.arange(chunk.start, chunk.start + len(chunk.indices))
        relevant = gallery_labels[chunk.indices] == q_labels[rows, None]
        hits[rows] = recall_hits(relevant, ks)
        if compute_map_at_r:
            r = relevant_counts[rows]
            has = r > 0
            ap[rows[has]] = average_precision_at_r(relevant[has], r[has])
            rp[rows[has]] = r_precision(relevant[has], r[has])
    return _QueryScores(queries, q_labels, gallery, gallery_labels, self_retrieval,
                        relevant_counts, hits, ap, rp)


def _aggregate(scores: _QueryScores, ks: tuple, compute_map_at_r: bool,
               selected: np.ndarray) -> Dict[str, float]:
    """Means over the ``selected`` queries (Recall over all of them, MAP@R and R-precision over
    those with R >= 1)."""
    num_queries = int(selected.sum())
    results: Dict[str, float] = {
        f"recall@{k}": float(scores.hits[selected, i].sum()) / num_queries
        for i, k in enumerate(ks)}
    without = int(np.sum(scores.relevant_counts[selected] == 0))
    if compute_map_at_r:
        scored = num_queries - without
        # Summed in query order, as one running sum: the mean does not depend on chunking.
        results["map@r"] = (float(np.nansum(scores.average_precision[selected])) / scored
                            if scored else float("nan"))
        results["r_precision"] = (float(np.nansum(scores.r_precision[selected])) / scored
                                  if scored else float("nan"))
    results["num_queries"] = num_queries
    results["num_queries_without_relevant"] = without
    return results
