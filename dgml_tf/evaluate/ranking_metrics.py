"""Per-query ranking metrics computed from a relevance mask of the ranked neighbours.

``relevant[i, j]`` is True when query i's j-th nearest neighbour (0-based, best first) shares
its class. The functions return one value per query so chunked evaluation can sum them.
Definitions follow Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check_mask(relevant) -> np.ndarray:
    relevant = np.asarray(relevant)
    if relevant.ndim != 2:
        raise ValueError(f"relevant must be a (num_queries, k) mask, got shape {relevant.shape}.")
    return relevant.astype(bool, copy=False)


def recall_hits(relevant, ks: Sequence[int]) -> np.ndarray:
    """Bool (Q, len(ks)): whether any of the first K neighbours is relevant, for each K.

    A K larger than the number of ranked neighbours uses all of them (the top K of a shorter list
    is the whole list).
    """
    relevant = _check_mask(relevant)
    first_hit = np.where(relevant.any(axis=1), relevant.argmax(axis=1), np.iinfo(np.int64).max)
    return first_hit[:, None] < np.asarray(ks, dtype=np.int64)[None, :]


def _check_r(relevant: np.ndarray, r) -> np.ndarray:
    r = np.asarray(r, dtype=np.int64)
    if r.shape != (relevant.shape[0],):
        raise ValueError(f"r must have one entry per query ({relevant.shape[0]}), got {r.shape}.")
    if np.any(r < 1):
        raise ValueError("r must be >= 1 for every query; drop queries without relevant items.")
    if np.any(r > relevant.shape[1]):
        raise ValueError(
            f"r (max {int(r.max())}) exceeds the {relevant.shape[1]} ranked neighbours; retrieve "
            "at least max(r) neighbours."
        )
    return r


def average_precision_at_r(relevant, r) -> np.ndarray:
    """MAP@R per query: (1/R) * sum over i <= R of precision@i * rel(i), R = r[query].

    Example: R = 10 with relevant items at ranks 1 and 3 gives (1 + 2/3) / 10.
    """
    relevant = _check_mask(relevant)
    r = _check_r(relevant, r)
    ranks = np.arange(1, relevant.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    hits = relevant & within_r
    precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]
    return np.sum(precision_at_i * hits, axis=1) / r


def r_precision(relevant, r) -> np.ndarray:
    """R-precision per query: fraction of the first R neighbours that are relevant."""
    relevant = _check_mask(relevant)
    r = _check_r(relevant, r)
    within_r = np.arange(1, relevant.shape[1] + 1)[None, :] <= r[:, None]
    return np.sum(relevant & within_r, axis=1) / r
