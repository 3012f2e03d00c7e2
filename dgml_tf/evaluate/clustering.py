"""NMI of k-means clustering against the true classes.

scikit-learn's KMeans is used (k-means++ seeding, ``n_init`` restarts, a fixed seed) rather than
a TF re-implementation: it is the reference implementation other metric-learning papers report
NMI with, and NMI is computed once per evaluation, so it is not on a hot path.
scikit-learn is an optional extra (``pip install 'dgml-tf[evaluation]'``).
"""

from __future__ import annotations

import numpy as np


def _sklearn():
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError as error:
        raise ImportError(
            "NMI needs scikit-learn: pip install 'dgml-tf[evaluation]' (or scikit-learn>=1.4), "
            "or pass compute_nmi=False."
        ) from error
    return KMeans, normalized_mutual_info_score


def kmeans_nmi(embeddings, labels, *, n_init: int = 1, seed: int = 0,
               num_clusters: int | None = None) -> float:
    """NMI between k-means clusters of ``embeddings`` and ``labels``.

    Args:
        embeddings: (N, D) array, already normalised as the retrieval metric expects.
        labels: (N,) integer classes.
        n_init: k-means restarts (the best inertia is kept).
        seed: random seed of the k-means++ seeding.
        num_clusters: defaults to the number of distinct labels.

    Returns:
        NMI in [0, 1] (arithmetic normalisation, scikit-learn's default).

    Example:
        >>> x = np.array([[0., 0.], [0., .1], [5., 5.], [5., 5.1]])
        >>> kmeans_nmi(x, [0, 0, 1, 1])
        1.0
    """
    KMeans, nmi = _sklearn()
    labels = np.asarray(labels)
    k = int(num_clusters or len(np.unique(labels)))
    if k < 1 or k > len(labels):
        raise ValueError(f"num_clusters must be in [1, {len(labels)}], got {k}.")
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(
        np.asarray(embeddings, dtype=np.float64))
    return float(nmi(labels, clusters))
