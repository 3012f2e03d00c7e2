"""Pairwise quantities of a batch: unit vectors, distances and same-class masks.

Shared by the miners and the pair-based losses.
"""

from keras import ops

# Below this squared distance the gradient of sqrt explodes; distances are floored at 1e-6.
_MIN_SQUARED_DISTANCE = 1e-12


def unit_vectors(x):
    """L2-normalises the last axis (zero vectors stay zero)."""
    return ops.normalize(x, axis=-1, order=2, epsilon=1e-12)


def pairwise_squared_distances(unit):
    """Squared Euclidean distances ``(B, B)`` between unit vectors, from ``2 - 2 cos``."""
    cosine = ops.matmul(unit, ops.transpose(unit))
    return ops.maximum(2.0 - 2.0 * cosine, 0.0)


def safe_sqrt(squared):
    """sqrt with a floored argument, so the gradient stays finite at zero distance."""
    return ops.sqrt(ops.maximum(squared, _MIN_SQUARED_DISTANCE))


def pair_masks(labels):
    """Returns float32 ``(positive, negative)`` masks ``(B, B)``.

    Positive: same label, anchor itself excluded. Negative: different label.
    """
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    positive = ops.cast(ops.logical_and(same, not_self), "float32")
    negative = ops.cast(ops.logical_not(same), "float32")
    return positive, negative


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is 1; 0 when the mask is empty."""
    return ops.divide_no_nan(ops.sum(values * mask), ops.sum(mask))
