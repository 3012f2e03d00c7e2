"""The base class of every metric loss here: apply a loss to each group, average the groups."""

from __future__ import annotations

import inspect
from typing import Optional

import keras
from keras import ops

from dgml_tf.losses.grouped_inputs import check_same_batch, standardize_groups, standardize_labels
from dgml_tf.miners.stateless_random import split_seed


class GroupedMetricLoss(keras.losses.Loss):
    """Applies :meth:`group_loss` to each of the K groups separately and averages.

    ``y_true``: integer labels ``(B,)`` or ``(B, 1)``. ``y_pred``: group embeddings
    ``(B, K, d)``, or ``(B, D)``: one group, or ``num_groups`` equal consecutive groups when
    ``num_groups`` is given (the concatenated retrieval embedding). The loss is a float32 scalar
    per batch (a Keras ``sample_weight`` would only rescale it).

    Subclasses implement ``group_loss(labels, embeddings, group_index)`` on one group:
    int32 labels ``(B,)`` and float32 embeddings ``(B, d)`` (not yet normalised).

    Args:
        num_groups: the expected K (checked against ``(B, K, d)`` input; used to split
            ``(B, D)`` input). None accepts any K and treats ``(B, D)`` as one group.
        name, reduction, dtype: as for :class:`keras.losses.Loss`.
    """

    def __init__(
        self,
        num_groups: Optional[int] = None,
        name: Optional[str] = None,
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
            raise ValueError(
                f"{type(self).__name__}: num_groups must be a positive integer or None; got "
                f"{num_groups!r}."
            )
        self.num_groups = num_groups

    def call(self, y_true, y_pred, seed=None):
        """The mean over groups of :meth:`group_loss`.

        ``seed`` (optional stateless int ``(2,)`` seed) reaches losses that sample (their
        ``group_loss`` takes a ``seed`` argument), split into one independent seed per group.
        """
        loss_name = type(self).__name__
        labels = standardize_labels(y_true, loss_name)
        groups = standardize_groups(y_pred, loss_name, self.num_groups)
        check_same_batch(labels, groups, loss_name)
        num_groups = groups.shape[1]
        group_seeds = [None] * num_groups
        if seed is not None and "seed" in inspect.signature(self.group_loss).parameters:
            group_seeds = split_seed(seed, num_groups)
        per_group = []
        for k in range(num_groups):
            kwargs = {} if group_seeds[k] is None else {"seed": group_seeds[k]}
            per_group.append(self.group_loss(labels, groups[:, k, :], k, **kwargs))
        return ops.mean(ops.stack(per_group))

    def group_loss(self, labels, embeddings, group_index: int):
        """The loss of one group: a float32 scalar."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement group_loss(labels, embeddings, group_index)."
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config["num_groups"] = self.num_groups
        return config
