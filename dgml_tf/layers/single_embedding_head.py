"""Baseline head: one embedding from the globally pooled feature map."""

import numbers

import keras
from keras import ops

from dgml_tf.layers._unit_normalize import unit_normalize


@keras.saving.register_keras_serializable(package="dgml_tf")
class SingleEmbeddingHead(keras.layers.Layer):
    """Global average pooling, then a bias-free linear map to D, L2-normalised.

    The paper's "single embedding" baseline. The output keeps a group axis of size 1,
    ``(batch, 1, D)``, so downstream code (losses, flattening, evaluation) treats it as K = 1.

    Args:
        embedding_dim: D, the embedding size.
        normalize: if True, L2-normalise the embedding.
        kernel_initializer: initializer of ``kernel`` (C, D).
        kernel_regularizer: regularizer of ``kernel``.
        **kwargs: base layer arguments (``name``, ``dtype``, ``activity_regularizer``).

    Input shape:
        ``(batch, H, W, C)``.

    Output shape:
        ``(batch, 1, D)``.

    Examples:

    >>> import numpy as np
    >>> SingleEmbeddingHead(8)(np.random.rand(2, 3, 3, 4).astype("float32")).shape
    TensorShape([2, 1, 8])
    """

    def __init__(
        self,
        embedding_dim: int,
        normalize: bool = True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (isinstance(embedding_dim, bool) or not isinstance(embedding_dim, numbers.Integral)
                or embedding_dim < 1):
            raise ValueError(
                "SingleEmbeddingHead: embedding_dim must be a positive integer, got "
                f"{embedding_dim!r}."
            )
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"SingleEmbeddingHead needs a known channel count; got {tuple(input_shape)}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, self.embedding_dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs):
        pooled = ops.mean(inputs, axis=(1, 2))  # (B, C)
        embedding = ops.matmul(pooled, self.kernel)[:, None, :]  # (B, 1, D)
        if self.normalize:
            return unit_normalize(embedding, output_dtype=self.compute_dtype)
        return embedding

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "normalize": self.normalize,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
