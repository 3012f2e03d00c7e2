"""Per-group evaluation: how well the concatenated embedding and each group alone retrieve."""

from __future__ import annotations

from typing import Dict

import numpy as np

from dgml_tf.evaluate.retrieval import evaluate_retrieval


def _check_groups(group_embeddings, name: str) -> np.ndarray:
    array = np.asarray(group_embeddings)
    if array.ndim != 3:
        raise ValueError(f"{name} must be (num_items, num_groups, group_dim), got shape "
                         f"{array.shape}; for a flat embedding use evaluate_retrieval.")
    return array


def evaluate_groups(
    group_embeddings,
    labels,
    query_group_embeddings=None,
    query_labels=None,
    **options,
) -> Dict[str, Dict[str, float]]:
    """Metrics of the concatenated embedding and of each group on its own.

    Args:
        group_embeddings: (N, K, d) per-group embeddings (the model's "group_embeddings").
        labels: (N,) integer classes.
        query_group_embeddings: optional (Q, K, d) queries for query-vs-gallery evaluation.
        query_labels: (Q,) classes of the queries.
        **options: passed to :func:`evaluate_retrieval` (recall_ks, compute_nmi, chunk_size,
            metric, ...). With the default "cosine" metric each group is normalised on its
            own and the concatenation as a whole.

    Returns:
        ``{"concatenated": {...}, "group_0": {...}, ..., "group_{K-1}": {...}}``.

    Example:
        >>> g = np.random.default_rng(0).normal(size=(6, 2, 4))
        >>> sorted(evaluate_groups(g, [0, 0, 1, 1, 2, 2], compute_nmi=False))
        ['concatenated', 'group_0', 'group_1']
    """
    gallery = _check_groups(group_embeddings, "group_embeddings")
    queries = None
    if query_group_embeddings is not None:
        queries = _check_groups(query_group_embeddings, "query_group_embeddings")
        if queries.shape[1:] != gallery.shape[1:]:
            raise ValueError(f"query_group_embeddings have (groups, dim) {queries.shape[1:]} but "
                             f"group_embeddings {gallery.shape[1:]}.")

    def flat(x):
        return None if x is None else x.reshape(len(x), -1)

    results = {"concatenated": evaluate_retrieval(flat(gallery), labels, flat(queries),
                                                  query_labels, **options)}
    for k in range(gallery.shape[1]):
        results[f"group_{k}"] = evaluate_retrieval(
            gallery[:, k], labels, None if queries is None else queries[:, k], query_labels,
            **options)
    return results
