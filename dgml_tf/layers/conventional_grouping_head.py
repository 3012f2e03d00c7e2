"""Baseline head: K linear groups on the globally pooled feature map."""

import numbers

import keras
from keras import ops

from dgml_tf.distances import l2_normalize


@keras.saving.register_keras_serializable(package="dgml_tf")
class ConventionalGroupingHead(keras.layers.Layer):
    """Global average pooling, one bias-free linear map to K * d reshaped to (K, d).

    The paper's "conventional grouping" baseline: every group sees the same pooled vector, so
    groups cannot attend to different image regions (unlike :class:`AttentiveGrouping`).

    Args:
        num_groups: K.
        group_dim: d.
        normalize: if True, L2-normalise each group embedding.
        kernel_initializer: initializer of ``kernel`` (C, K * d).
        kernel_regularizer: regularizer of ``kernel``.
        **kwargs: base layer arguments (``name``, ``dtype``, ``activity_regularizer``).

    Input shape:
        ``(batch, H, W, C)``.

    Output shape:
        ``(batch, K, d)``.

    Examples:

    >>> import numpy as np
    >>> head = ConventionalGroupingHead(num_groups=3, group_dim=4)
    >>> head(np.random.rand(2, 3, 3, 8).astype("float32")).shape
    TensorShape([2, 3, 4])
    """

    def __init__(
        self,
        num_groups: int,
        group_dim: int,
        normalize: bool = True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_groups", num_groups), ("group_dim", group_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"ConventionalGroupingHead: {name} must be a positive integer, got {value!r}."
                )
        self.num_groups = int(num_groups)
        self.group_dim = int(group_dim)
        self.normalize = bool(normalize)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel count; got {tuple(input_shape)}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, self.num_groups * self.group_dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs):
        pooled = ops.mean(inputs, axis=(1, 2))  # (B, C)
        groups = ops.reshape(
            ops.matmul(pooled, self.kernel), (-1, self.num_groups, self.group_dim)
        )
        if self.normalize:
            # float32: a float16 sum of squares makes the norms visibly differ from 1.
            return l2_normalize(groups, clamp="squared_norm", compute_dtype="float32",
                                output_dtype=self.compute_dtype)
        return groups

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_groups, self.group_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_groups": self.num_groups,
                "group_dim": self.group_dim,
                "normalize": self.normalize,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
