"""Contrastive loss (Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an
Invariant Mapping", CVPR 2006), per group."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from dgml_tf.losses.grouped_loss import GroupedMetricLoss
from dgml_tf.distances import l2_normalize, safe_sqrt, unit_squared_distance_matrix
from dgml_tf.miners.pairwise import masked_mean, pair_masks


@keras.saving.register_keras_serializable(package="dgml_tf")
class ContrastiveLoss(GroupedMetricLoss):
    """Contrastive loss on Euclidean distances between unit group vectors.

    For a group, with ``D_ij`` the distance between unit vectors of samples ``i != j``:
    ``mean_{positive pairs} 1/2 D_ij^2 + mean_{negative pairs} 1/2 max(0, margin - D_ij)^2``
    (Hadsell et al.'s per-pair terms; positives and negatives averaged separately so the
    balance does not depend on the batch's class composition). Unit vectors have
    ``D in [0, 2]``; the default ``margin=1.0`` pushes negatives beyond 60 degrees.

    Args:
        margin: the distance beyond which negatives cost nothing.
        num_groups, name, reduction, dtype: see :class:`GroupedMetricLoss`.

    Examples:

    >>> import numpy as np
    >>> loss = ContrastiveLoss()
    >>> x = np.eye(4, dtype="float32")  # every pair at distance sqrt(2) > margin
    >>> value = float(loss(np.array([0, 0, 1, 1]), x))  # positives: 1/2 * 2
    >>> round(value, 4)
    1.0
    """

    def __init__(
        self,
        margin: float = 1.0,
        num_groups: Optional[int] = None,
        name: str = "contrastive_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(num_groups=num_groups, name=name, reduction=reduction, dtype=dtype)
        if margin <= 0:
            raise ValueError(f"ContrastiveLoss: margin must be > 0; got {margin}.")
        self.margin = float(margin)

    def group_loss(self, labels, embeddings, group_index: int):
        squared = unit_squared_distance_matrix(l2_normalize(embeddings))
        positive, negative = pair_masks(labels)
        positive_term = 0.5 * squared
        negative_term = 0.5 * ops.square(ops.relu(self.margin - safe_sqrt(squared)))
        return masked_mean(positive_term, positive) + masked_mean(negative_term, negative)

    def get_config(self) -> dict:
        config = super().get_config()
        config["margin"] = self.margin
        return config
