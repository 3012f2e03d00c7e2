"""Turning K group embeddings into the single retrieval embedding."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dgml_tf")
class FlattenGroups(keras.layers.Layer):
    """Concatenates K group embeddings ``(batch, K, d)`` into one ``(batch, K * d)`` vector.

    With unit group vectors (the heads' default), the result has norm ``sqrt(K)``, and the
    squared Euclidean distance between two results is the sum of the per-group squared
    distances, which is what nearest-neighbour retrieval ranks by.

    Args:
        **kwargs: base layer arguments (``name``, ``dtype``).

    Examples:

    >>> import numpy as np
    >>> FlattenGroups()(np.ones((2, 3, 4), "float32")).shape
    TensorShape([2, 12])
    """

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                "FlattenGroups expects group embeddings of shape (batch, K, d) with known K and "
                f"d; got {tuple(input_shape)}."
            )

    def call(self, group_embeddings):
        shape = ops.shape(group_embeddings)
        return ops.reshape(group_embeddings, (shape[0], shape[1] * shape[2]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2])


def flatten_groups(group_embeddings, name: str = "embedding"):
    """Concatenates group embeddings ``(batch, K, d)`` into ``(batch, K * d)``.

    Works on symbolic Keras tensors (adds a :class:`FlattenGroups` layer named ``name``) and on
    eager tensors or NumPy arrays (returns the reshaped tensor).

    Args:
        group_embeddings: a rank-3 tensor ``(batch, K, d)``.
        name: name of the layer added when the input is symbolic.

    Returns:
        A ``(batch, K * d)`` tensor.
    """
    if keras.backend.is_keras_tensor(group_embeddings):
        return FlattenGroups(name=name)(group_embeddings)
    group_embeddings = ops.convert_to_tensor(group_embeddings)
    if len(group_embeddings.shape) != 3:
        raise ValueError(
            "flatten_groups expects group embeddings of shape (batch, K, d); got shape "
            f"{tuple(group_embeddings.shape)}."
        )
    shape = ops.shape(group_embeddings)
    return ops.reshape(group_embeddings, (shape[0], shape[1] * shape[2]))
