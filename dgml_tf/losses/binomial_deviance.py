"""Binomial deviance loss (Yi et al., "Deep Metric Learning for Person Re-Identification",
ICPR 2014), per group."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from dgml_tf.losses.grouped_loss import GroupedMetricLoss
from dgml_tf.distances import cosine_similarity_matrix, l2_normalize
from dgml_tf.miners.pairwise import masked_mean, pair_masks


@keras.saving.register_keras_serializable(package="dgml_tf")
class BinomialDevianceLoss(GroupedMetricLoss):
    """Binomial deviance on cosine similarities, applied to each group and averaged.

    For a group, with ``s_ij`` the cosine of samples ``i != j``:
    ``mean_{positive pairs} softplus(-alpha (s_ij - beta))
    + mean_{negative pairs} softplus(alpha * C * (s_ij - beta))``.
    This is Yi et al.'s ``sum W * log(1 + exp(-alpha (S - beta) * M))`` with ``M = 1`` for
    positives and ``-C`` for negatives, weights ``1/n_pos`` and ``1/n_neg``. Defaults
    ``alpha=2, beta=0.5, C=25`` are the constants of the DGML authors' binomial-deviance terms
    (and of common deep-metric-learning codebases). A pair type absent from the batch
    contributes 0.

    Args:
        alpha: slope of the deviance.
        beta: cosine threshold.
        negative_cost: ``C``, the asymmetric cost of negative pairs.
        num_groups, name, reduction, dtype: see :class:`GroupedMetricLoss`.

    Examples:

    >>> import numpy as np
    >>> loss = BinomialDevianceLoss()
    >>> x = np.eye(4, dtype="float32")  # orthogonal samples
    >>> value = float(loss(np.array([0, 0, 1, 1]), x))  # positives at cosine 0: softplus(1)
    >>> round(value, 4)
    1.3133
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 0.5,
        negative_cost: float = 25.0,
        num_groups: Optional[int] = None,
        name: str = "binomial_deviance_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(num_groups=num_groups, name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.negative_cost = float(negative_cost)

    def group_loss(self, labels, embeddings, group_index: int):
        cosine = cosine_similarity_matrix(l2_normalize(embeddings))
        positive, negative = pair_masks(labels)
        positive_term = ops.softplus(-self.alpha * (cosine - self.beta))
        negative_term = ops.softplus(self.alpha * self.negative_cost * (cosine - self.beta))
        return masked_mean(positive_term, positive) + masked_mean(negative_term, negative)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"alpha": self.alpha, "beta": self.beta, "negative_cost": self.negative_cost}
        )
        return config
