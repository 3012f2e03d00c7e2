"""The diversity loss between the groups of one image (method.md, "Losses")."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dgml_tf.distances import l2_normalize


def diversity_loss(group_embeddings, beta1: float = 2.0, beta2: float = 0.5, scale: float = 25.0):
    """Binomial-deviance diversity between the K groups of each image ("negatives only").

    ``L_div = 1/(K-1) * sum_{i<j} mean_b softplus(beta1 * scale * (cos(o_b^i, o_b^j) - beta2))``

    The normaliser is ``1/(K-1)``, not the number of pairs, as in the authors' code. Cosines
    are computed on internally L2-normalised groups, so unnormalised input works; the
    computation runs in float32 whatever the input dtype (mixed precision).

    Reference values for K=3: identical groups give ``3 * softplus(25) / 2 ~= 37.5``,
    orthogonal groups ``3 * softplus(-25) / 2 ~= 2.1e-11``, pairwise cosine 0.5 gives
    ``3 * ln(2) / 2``.

    Args:
        group_embeddings: ``(batch, K, d)`` group embeddings.
        beta1: slope ``alpha`` of the binomial deviance (Yi et al., 2014).
        beta2: the cosine threshold ``beta``.
        scale: the negative-pair cost ``C``.

    Returns:
        A float32 scalar; 0 when K = 1.

    Examples:

    >>> import numpy as np
    >>> groups = np.tile(np.eye(4, dtype="float32")[None, :3], (2, 1, 1))  # orthogonal
    >>> float(diversity_loss(groups)) < 1e-9
    True
    """
    groups = ops.cast(ops.convert_to_tensor(group_embeddings), "float32")
    if len(groups.shape) != 3 or groups.shape[1] is None:
        raise ValueError(
            "diversity_loss expects group embeddings of shape (batch, K, d) with a static K; "
            f"got shape {tuple(groups.shape)}. Pass the layer's group output, not the "
            "flattened embedding."
        )
    num_groups = groups.shape[1]
    if num_groups == 1:
        return ops.convert_to_tensor(0.0, dtype="float32")
    unit = l2_normalize(groups)
    cosine = ops.einsum("bkd,bjd->bkj", unit, unit)  # (B, K, K)
    per_pair = ops.mean(ops.softplus(beta1 * scale * (cosine - beta2)), axis=0)  # (K, K)
    # pairs i < j; a tensor, since torch tensors do not multiply NumPy arrays
    upper = ops.convert_to_tensor(
        np.triu(np.ones((num_groups, num_groups), dtype="float32"), k=1)
    )
    return ops.sum(per_pair * upper) / float(num_groups - 1)


@keras.saving.register_keras_serializable(package="dgml_tf")
class DiversityLoss(keras.losses.Loss):
    """:func:`diversity_loss` as a Keras loss; ``y_true`` is ignored.

    Use it on a model output ``(batch, K, d)``, e.g.
    ``model.compile(loss={"group_embeddings": DiversityLoss()}, loss_weights=...)``. To add
    the term to a model whose group output also feeds another loss, prefer
    :class:`dgml_tf.losses.DiversityRegularizer` on the grouping layer.

    Args:
        beta1: slope ``alpha`` of the binomial deviance.
        beta2: the cosine threshold.
        scale: the negative-pair cost ``C``.
        name: loss name.
        reduction: Keras reduction; the loss is already a scalar per batch.
        dtype: dtype of the inputs handed to the loss (the computation is float32).

    Examples:

    >>> import numpy as np
    >>> groups = np.ones((2, 3, 4), "float32")  # identical groups
    >>> round(float(DiversityLoss()(None, groups)), 3)
    37.5
    """

    def __init__(
        self,
        beta1: float = 2.0,
        beta2: float = 0.5,
        scale: float = 25.0,
        name: str = "diversity_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.scale = float(scale)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # y_true is unused and may be None; Keras' base __call__ would try to convert it.
        if y_true is None:
            y_true = ops.zeros((1,))
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return diversity_loss(y_pred, self.beta1, self.beta2, self.scale)

    def get_config(self):
        config = super().get_config()
        config.update({"beta1": self.beta1, "beta2": self.beta2, "scale": self.scale})
        return config
