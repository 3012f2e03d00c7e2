"""Same-class masks of a batch and masked means, shared by the miners and the pair-based losses.

Unit vectors and distances live in :mod:`dgml_tf.distances`.
"""

from keras import ops


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
