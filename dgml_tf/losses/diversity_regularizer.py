"""The diversity loss as a Keras activity regularizer on a grouping layer."""

from __future__ import annotations

import keras
from keras import ops

from dgml_tf.losses.diversity import diversity_loss


@keras.saving.register_keras_serializable(package="dgml_tf")
class DiversityRegularizer(keras.regularizers.Regularizer):
    """Adds ``weight * diversity_loss(groups)`` to the model loss, whatever the batch size.

    Keras 3 (``Layer.__call__``, and ``AttentiveGrouping`` which applies its activity
    regularizer to the group embeddings only) divides an activity regularizer's value by the
    batch size. :func:`diversity_loss` is already a batch mean, so this regularizer returns
    ``weight * diversity_loss * batch_size``: after Keras' division the term in
    ``model.losses`` is exactly ``weight * diversity_loss`` (``lambda_div * L_div`` of the
    paper), for any batch size.

    Args:
        weight: ``lambda_div`` (paper: 0.02 CUB, 0.01 Cars196, 0.03 SOP and In-Shop).
        beta1, beta2, scale: the diversity loss constants (see :func:`diversity_loss`).

    Examples:

    >>> import keras
    >>> from dgml_tf.layers import AttentiveGrouping
    >>> layer = AttentiveGrouping(num_groups=3, group_dim=8, reduction=2,
    ...                           activity_regularizer=DiversityRegularizer(0.02))
    """

    def __init__(self, weight: float, beta1: float = 2.0, beta2: float = 0.5, scale: float = 25.0):
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ValueError(
                f"DiversityRegularizer: weight must be a non-negative number (lambda_div, e.g. "
                f"0.02); got {weight!r}."
            )
        self.weight = float(weight)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.scale = float(scale)

    def __call__(self, x):
        if len(x.shape) != 3:
            raise ValueError(
                "DiversityRegularizer must regularize group embeddings of shape (batch, K, d); "
                f"got an output of shape {tuple(x.shape)}. Put it on a layer whose outputs are "
                "all group embeddings (AttentiveGrouping applies it to its group output only)."
            )
        value = diversity_loss(x, self.beta1, self.beta2, self.scale)
        batch_size = ops.cast(ops.shape(x)[0], "float32")
        return self.weight * value * batch_size

    def get_config(self) -> dict:
        return {
            "weight": self.weight,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "scale": self.scale,
        }
