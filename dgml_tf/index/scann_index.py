"""ScaNN searchers: parameters from the gallery size, building, saving and loading.

Parameter guidance, from ScaNN's ``docs/algorithms.md``
(github.com/google-research/google-research/blob/master/scann/docs/algorithms.md):

- fewer than ~20k points: brute force (we use :mod:`dgml_tf.index.exact_index`);
- fewer than ~100k points: score with asymmetric hashing (AH), then rescore (no partitioning);
- more than ~100k points: partition (``.tree``), score with AH, then rescore;
- AH with ``dimensions_per_block = 2``; ``num_leaves`` roughly sqrt(number of points).

ScaNN's README example searches 100 of 2000 leaves (5 %) and reorders 100 candidates with an
anisotropic quantization threshold of 0.2; those are our defaults for the search fraction,
``reorder_k`` and the threshold, with at least ``MIN_LEAVES_SEARCHED`` leaves searched.

Neighbours for every k: a ScaNN searcher returns at most ``pre_reorder_num_neighbors``
(``reorder_k``) distinct items and pads the rest (repeated ids, NaN scores); with a tree it also
sees only the points of the leaves it searches. :func:`search_depths` therefore raises, per
call, the pre-reorder depth to ``max(reorder_k, 10 k)`` and the leaves searched to enough
leaves to hold that many points whichever leaves are picked (from the leaf sizes,
``datapoint_to_token.npy``), and :func:`valid_rows` checks every answer (k distinct in-range
ids, finite, descending scores) so a padded row is never returned.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, Optional

import numpy as np

BRUTE_FORCE_BELOW = 20_000
PARTITION_FROM = 100_000
LEAVES_SEARCHED_FRACTION = 0.05
# Small trees need more than 5 %: on 4k Fashion-MNIST PCA vectors (63 leaves) searching 4 leaves
# gave recall@10 0.90, 8 leaves 0.98.
MIN_LEAVES_SEARCHED = 8
MAX_TRAINING_SAMPLE = 250_000
# Candidates re-scored exactly per neighbour asked for: ScaNN's example ratio (100 for k=10).
REORDER_PER_NEIGHBOUR = 10


def require_scann():
    """Imports scann with a clear error when the serving extra is missing."""
    try:
        import scann
    except ImportError as error:
        raise ImportError(
            "ScaNN indexes need scann: pip install 'dgml-tf[serving]' (scann[tf]==1.4.2, built "
            "for TF 2.20). Use backend='exact' to search without it."
        ) from error
    return scann


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """How a ScaNN searcher is built.

    Attributes:
        num_leaves: partitions of the tree; None builds no tree (AH over all points).
        num_leaves_to_search: partitions scored per query.
        training_sample_size: points used to train the partitioning.
        dimensions_per_block: AH block size (2 per ScaNN's guidance).
        anisotropic_quantization_threshold: AH's anisotropic loss threshold for dot products.
        reorder_k: candidates rescored exactly before the final top-k.
    """

    num_leaves: Optional[int] = None
    num_leaves_to_search: Optional[int] = None
    training_sample_size: Optional[int] = None
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_k: int = 100

    def validate(self, num_points: int) -> "ScannParams":
        if self.num_leaves is not None:
            if not 1 <= self.num_leaves <= num_points:
                raise ValueError(f"num_leaves must be in 1..{num_points}, got {self.num_leaves}.")
            if not self.num_leaves_to_search or not 1 <= self.num_leaves_to_search <= self.num_leaves:
                raise ValueError(
                    f"num_leaves_to_search must be in 1..num_leaves={self.num_leaves}, got "
                    f"{self.num_leaves_to_search}."
                )
            if not self.training_sample_size or self.training_sample_size < self.num_leaves:
                raise ValueError(
                    f"training_sample_size ({self.training_sample_size}) must be >= num_leaves "
                    f"({self.num_leaves})."
                )
        if self.reorder_k < 1 or self.dimensions_per_block < 1:
            raise ValueError("reorder_k and dimensions_per_block must be >= 1.")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def choose_scann_params(num_points: int, partition: Optional[bool] = None, **overrides) -> ScannParams:
    """ScaNN parameters for ``num_points`` following ScaNN's guidance (module docstring).

    Args:
        num_points: gallery size.
        partition: force (True) or forbid (False) the tree; None decides by size (>= 100k).
        **overrides: any :class:`ScannParams` field.

    Example:
        >>> choose_scann_params(200_000).num_leaves
        447
    """
    if partition is None:
        partition = num_points >= PARTITION_FROM
    values: Dict[str, Any] = {}
    if partition:
        num_leaves = max(1, int(round(math.sqrt(num_points))))
        values.update(
            num_leaves=num_leaves,
            num_leaves_to_search=min(
                num_leaves,
                max(MIN_LEAVES_SEARCHED, int(math.ceil(LEAVES_SEARCHED_FRACTION * num_leaves))),
            ),
            training_sample_size=min(num_points, MAX_TRAINING_SAMPLE),
        )
    values.update(overrides)
    return ScannParams(**values).validate(num_points)


def configure_builder(builder, params: ScannParams):
    """Applies ``params`` to a ScaNN builder (pybind or TF-ops builders share this API)."""
    if params.num_leaves is not None:
        builder = builder.tree(
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.num_leaves_to_search,
            training_sample_size=params.training_sample_size,
        )
    builder = builder.score_ah(
        params.dimensions_per_block,
        anisotropic_quantization_threshold=params.anisotropic_quantization_threshold,
    )
    return builder.reorder(params.reorder_k)


def build_scann_searcher(database: np.ndarray, params: ScannParams, num_neighbors: int = 10):
    """A ``scann_ops_pybind`` searcher over ``database`` (N, D) float32 with dot products."""
    scann = require_scann()
    database = np.ascontiguousarray(database, np.float32)
    params.validate(database.shape[0])
    builder = scann.scann_ops_pybind.builder(database, num_neighbors, "dot_product")
    return configure_builder(builder, params).build()


def save_scann_searcher(searcher, directory: "str | os.PathLike") -> None:
    """Serialises with relative asset paths, so the index directory can be renamed."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    searcher.serialize(directory, relative_path=True)


def load_scann_searcher(directory: "str | os.PathLike"):
    scann = require_scann()
    return scann.scann_ops_pybind.load_searcher(os.fspath(directory))


def leaf_sizes(datapoint_to_token: Optional[np.ndarray], num_leaves: Optional[int]) -> Optional[np.ndarray]:
    """Points per leaf (ascending) from ScaNN's ``datapoint_to_token``; None without a tree."""
    if num_leaves is None or datapoint_to_token is None:
        return None
    tokens = np.asarray(datapoint_to_token).ravel().astype(np.int64)
    return np.sort(np.bincount(tokens, minlength=int(num_leaves)))


def leaf_sizes_from_dir(directory: "str | os.PathLike", num_leaves: Optional[int]) -> Optional[np.ndarray]:
    """:func:`leaf_sizes` of a searcher serialised in ``directory`` (None without a tree)."""
    path = os.path.join(os.fspath(directory), "datapoint_to_token.npy")
    if num_leaves is None or not os.path.isfile(path):
        return None
    return leaf_sizes(np.load(path), num_leaves)


def search_depths(params: ScannParams, k: int, sizes: Optional[np.ndarray],
                  num_points: Optional[int] = None) -> tuple:
    """``(pre_reorder_num_neighbors, leaves_to_search)`` that let a search return ``k`` items.

    Args:
        params: the searcher's parameters.
        k: neighbours asked for.
        sizes: :func:`leaf_sizes` (ascending), or None without a tree.
        num_points: the gallery size (caps the pre-reorder depth); None: no cap.

    Returns:
        ``pre_reorder`` = max(reorder_k, REORDER_PER_NEIGHBOUR * k), at most N: the ratio of
        ScaNN's example (reorder 100 candidates for 10 neighbours) kept for every k, since a
        depth of exactly k would leave the exact re-scoring nothing to choose from (recall@100
        0.70 instead of 0.99 on random unit vectors). ``leaves`` = -1 (the searcher's default)
        without a tree, else max(num_leaves_to_search, L) where the L smallest leaves hold at
        least ``pre_reorder`` points, so whichever leaves are searched hold enough candidates.

    Example:
        >>> search_depths(ScannParams(reorder_k=100), 500, None, num_points=2000)
        (2000, -1)
    """
    pre_reorder = max(int(params.reorder_k), REORDER_PER_NEIGHBOUR * int(k))
    if num_points is not None:
        pre_reorder = max(int(k), min(pre_reorder, int(num_points)))
    if params.num_leaves is None or sizes is None:
        return pre_reorder, -1
    covering = int(np.searchsorted(np.cumsum(sizes), pre_reorder)) + 1  # first prefix sum >= depth
    return pre_reorder, int(min(len(sizes), max(int(params.num_leaves_to_search), covering)))


def scann_search(searcher, queries: np.ndarray, k: int, params: ScannParams,
                 sizes: Optional[np.ndarray], num_points: Optional[int] = None) -> tuple:
    """Searches a ``scann_ops_pybind`` searcher deep enough for ``k`` (see :func:`search_depths`).

    Returns:
        ``(indices int64 (Q, k), scores float32 (Q, k))`` as ScaNN answers them; check them with
        :func:`valid_rows`.
    """
    pre_reorder, leaves = search_depths(params, k, sizes, num_points=num_points)
    indices, scores = searcher.search_batched(
        np.ascontiguousarray(queries, np.float32), final_num_neighbors=int(k),
        pre_reorder_num_neighbors=pre_reorder, leaves_to_search=None if leaves < 0 else leaves,
    )
    return np.asarray(indices, np.int64), np.asarray(scores, np.float32)


def valid_rows(indices: np.ndarray, scores: np.ndarray, num_points: int) -> np.ndarray:
    """Boolean (Q,): the row holds distinct ids in [0, N) with finite, non-increasing scores.

    ScaNN pads a short answer with repeated ids and NaN scores; such rows are False.
    """
    indices = np.asarray(indices)
    scores = np.asarray(scores)
    if indices.ndim != 2 or indices.shape != scores.shape:
        return np.zeros(indices.shape[:1], bool)
    ordered = np.sort(indices, axis=1)
    distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1)
    in_range = np.all((indices >= 0) & (indices < num_points), axis=1)
    finite = np.all(np.isfinite(scores), axis=1)
    descending = np.all(np.diff(scores, axis=1) <= 0, axis=1)
    return distinct & in_range & finite & descending
