"""Any pairwise metric loss, applied to each group separately and averaged."""

from __future__ import annotations

from typing import Optional

import keras

from dgml_tf.losses.grouped_loss import GroupedMetricLoss
from dgml_tf.distances import l2_normalize


def _is_tfsim_loss(loss) -> bool:
    return type(loss).__module__.startswith("tensorflow_similarity.")


@keras.saving.register_keras_serializable(package="dgml_tf")
class PerGroupLoss(GroupedMetricLoss):
    """Applies ``pairwise_loss(labels, group)`` to each group and averages over groups.

    ``pairwise_loss`` is any Keras loss taking integer labels ``(B,)`` and embeddings
    ``(B, d)``: ours, or a tensorflow-similarity loss (``MultiSimilarityLoss``,
    ``TripletLoss``, ``CircleLoss``, ...). tensorflow-similarity 0.17.1 losses are made to
    work under Keras 3 on the way in (:func:`dgml_tf.losses.tfsim_adapter.make_tfsim_loss`: reduction
    ``"sum_over_batch_size"``, graph-safe ``fn``); pass them as classes when their default
    reduction (``"auto"``) would stop them from being built, e.g.
    ``PerGroupLoss(tfsim.losses.MultiSimilarityLoss, num_groups=3)``.

    Args:
        pairwise_loss: a loss instance, or a tensorflow-similarity loss class.
        num_groups: see :class:`GroupedMetricLoss`.
        normalize: L2-normalise each group before the inner loss (the groups of attentive
            grouping are unit vectors; tensorflow-similarity losses expect unit vectors).
        name, reduction, dtype: as for :class:`keras.losses.Loss`.

    Examples:

    >>> import numpy as np
    >>> from dgml_tf.losses import ContrastiveLoss
    >>> loss = PerGroupLoss(ContrastiveLoss(), num_groups=2)
    >>> x = np.random.rand(4, 2, 3).astype("float32")
    >>> float(loss(np.array([0, 0, 1, 1]), x)) >= 0.0
    True
    """

    def __init__(
        self,
        pairwise_loss,
        num_groups: Optional[int] = None,
        normalize: bool = True,
        name: Optional[str] = None,
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        if isinstance(pairwise_loss, dict):
            pairwise_loss = keras.saving.deserialize_keras_object(pairwise_loss)
        if isinstance(pairwise_loss, type) or _is_tfsim_loss(pairwise_loss):
            from dgml_tf.losses.tfsim_adapter import make_tfsim_loss

            pairwise_loss = make_tfsim_loss(pairwise_loss)
        if not callable(pairwise_loss):
            raise TypeError(
                "PerGroupLoss: pairwise_loss must be a loss instance (or a "
                f"tensorflow-similarity loss class); got {pairwise_loss!r}."
            )
        inner_name = getattr(pairwise_loss, "name", type(pairwise_loss).__name__)
        super().__init__(
            num_groups=num_groups,
            name=name or f"per_group_{inner_name}",
            reduction=reduction,
            dtype=dtype,
        )
        self.pairwise_loss = pairwise_loss
        self.normalize = bool(normalize)

    @property
    def distance(self):
        """The inner loss's distance (tensorflow-similarity losses have one), so
        ``SimilarityModel.compile(distance="auto")`` can read it."""
        try:
            return self.pairwise_loss.distance
        except AttributeError:
            raise AttributeError(
                f"PerGroupLoss: the inner loss {type(self.pairwise_loss).__name__} has no "
                "distance; pass distance= to SimilarityModel.compile."
            ) from None

    def group_loss(self, labels, embeddings, group_index: int):
        if self.normalize:
            embeddings = l2_normalize(embeddings)
        inner = self.pairwise_loss
        if not isinstance(inner, keras.losses.Loss):
            return inner(labels, embeddings)
        # Not inner(...): Keras' Loss.__call__ divides by the number of replicas under
        # tf.distribute, and whoever reduces this loss (MetricLearningModel, Keras' compute_loss)
        # scales once more, so the inner loss would count 1/R too little (tested with R=2).
        values = inner.call(labels, keras.ops.cast(embeddings, inner.dtype))
        if len(values.shape) == 0:
            return values
        if inner.reduction == "sum":
            return keras.ops.sum(values)
        if inner.reduction in (None, "none"):
            raise ValueError(
                "PerGroupLoss: the inner loss has reduction='none' but each group needs a "
                "scalar; use 'sum_over_batch_size' (mean) or 'sum'."
            )
        return keras.ops.mean(values)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "pairwise_loss": keras.saving.serialize_keras_object(self.pairwise_loss),
                "normalize": self.normalize,
            }
        )
        return config
