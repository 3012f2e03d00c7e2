"""Baseline head: one embedding from the globally pooled feature map."""

import numbers

import keras

from dgml_tf.layers.conventional_grouping_head import ConventionalGroupingHead


@keras.saving.register_keras_serializable(package="dgml_tf")
class SingleEmbeddingHead(ConventionalGroupingHead):
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
        if (isinstance(embedding_dim, bool) or not isinstance(embedding_dim, numbers.Integral)
                or embedding_dim < 1):
            raise ValueError(
                "SingleEmbeddingHead: embedding_dim must be a positive integer, got "
                f"{embedding_dim!r}."
            )
        # One group of D dims: exactly the conventional grouping head with K = 1.
        super().__init__(num_groups=1, group_dim=int(embedding_dim), normalize=normalize,
                         kernel_initializer=kernel_initializer,
                         kernel_regularizer=kernel_regularizer, **kwargs)
        self.embedding_dim = int(embedding_dim)

    def get_config(self):
        config = super().get_config()
        del config["num_groups"], config["group_dim"]
        config["embedding_dim"] = self.embedding_dim
        return config
