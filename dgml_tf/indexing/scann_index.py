"""ScaNN searchers: parameters from the gallery size, building, saving and loading.

Parameter guidance, from ScaNN's ``docs/algorithms.md``
(github.com/google-research/google-research/blob/master/scann/docs/algorithms.md):

- fewer than ~20k points: brute force (we use :mod:`dgml_tf.indexing.exact_index`);
- fewer than ~100k points: score with asymmetric hashing (AH), then rescore (no partitioning);
- more than ~100k points: partition (``.tree``), score with AH, then rescore;
- AH with ``dimensions_per_block = 2``; ``num_leaves`` roughly sqrt(number of points).

ScaNN's README example searches 100 of 2000 leaves (5 %) and reorders 100 candidates with an
anisotropic quantization threshold of 0.2; those are our defaults for the search fraction,
``reorder_k`` and the threshold, with at least ``MIN_LEAVES_SEARCHED`` leaves searched.
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
