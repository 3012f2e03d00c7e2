"""Quantifies "distinct groups": how much the K attention maps overlap, how alike the groups are.

- attention overlap of two maps a_i, a_j (each a distribution over the h*w positions) is their
  histogram intersection sum_p min(a_i(p), a_j(p)): 1 for identical maps, 0 for disjoint support.
- group cosine is the cosine between two group embeddings of the same image.
Both are averaged over the K*(K-1)/2 group pairs and over images.
"""

from __future__ import annotations

import itertools

import numpy as np

from dgml_tf.distances import l2_normalize_np


def _pairs(k: int):
    if k < 2:
        raise ValueError(f"need at least 2 groups to compare; got K={k}.")
    return list(itertools.combinations(range(k), 2))


def attention_overlap(attention: np.ndarray) -> float:
    """Mean pairwise histogram intersection of (B, K, h, w) attention maps, in [0, 1]."""
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"attention must be (batch, K, h, w); got shape {a.shape}.")
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    flat = flat / np.maximum(flat.sum(-1, keepdims=True), 1e-12)
    values = [np.minimum(flat[:, i], flat[:, j]).sum(-1) for i, j in _pairs(a.shape[1])]
    return float(np.mean(values))


def group_cosine(group_embeddings: np.ndarray) -> float:
    """Mean pairwise cosine between the K group embeddings (B, K, d) of each image."""
    g = np.asarray(group_embeddings, dtype=np.float64)
    if g.ndim != 3:
        raise ValueError(f"group embeddings must be (batch, K, d); got shape {g.shape}.")
    g = l2_normalize_np(g, dtype=None)  # float64, as the array is
    values = [(g[:, i] * g[:, j]).sum(-1) for i, j in _pairs(g.shape[1])]
    return float(np.mean(values))


def group_diversity_report(group_embeddings: np.ndarray,
                           attention: np.ndarray | None = None) -> dict[str, float]:
    """Both statistics as a dict (attention overlap only when maps are given)."""
    report = {"group_cosine": group_cosine(group_embeddings)}
    if attention is not None:
        report["attention_overlap"] = attention_overlap(attention)
    return report
