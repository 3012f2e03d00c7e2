"""The attentive grouping layer (Xu et al., arXiv 2011.08877)."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from dgml_tf.distances import l2_normalize


@keras.saving.register_keras_serializable(package="dgml_tf")
class AttentiveGrouping(keras.layers.Layer):
    """Splits a feature map into K group embeddings, each attending over spatial positions.

    For a feature map ``X`` with ``C`` channels over ``N = H * W`` positions:

    - keys ``Kmap = X @ key_kernel`` (a bias-free 1x1 conv ``C -> key_dim``),
    - values ``V = X @ value_kernel`` (a bias-free 1x1 conv ``C -> group_dim``),
    - attention of group ``k``: ``a_k = softmax_p(queries[k] . Kmap(p))`` over the ``N``
      positions, without ``1/sqrt(d)`` scaling,
    - group embedding ``o_k = sum_p a_k(p) V(p)``, optionally followed by a shared bias-free
      ``group_dim x group_dim`` projection, then L2-normalised per group.

    The layer is invariant to permutations of the spatial positions (the attention maps permute
    with them), so any H, W is accepted, also unknown at build time.

    Softmax and normalisation run in float32 under mixed precision; the attention maps are
    always float32, the group embeddings come out in the layer's compute dtype.

    Args:
        num_groups: K, the number of groups (queries).
        group_dim: d, the size of each group embedding.
        reduction: r; the key size is ``C // r`` unless ``key_dim`` is given.
        key_dim: explicit key/query size, overriding ``C // reduction``.
        projection: if True, apply a shared bias-free ``d x d`` linear map after aggregation.
        normalize: if True, L2-normalise each group embedding.
        return_attention: if True, the layer returns ``(group_embeddings, attention)``.
        kernel_initializer: initializer of ``key_kernel``, ``value_kernel`` and
            ``projection_kernel``.
        queries_initializer: initializer of ``queries``.
        kernel_regularizer: regularizer of the key, value and projection kernels.
        queries_regularizer: regularizer of ``queries``.
        activity_regularizer: applied to the group embeddings ``(batch, K, d)`` only, never to
            the attention maps (e.g. ``dgml_tf.losses.DiversityRegularizer``). As for any Keras
            3 layer, the regularizer's value is divided by the batch size before it is added to
            the layer's losses.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``).

    Input shape:
        ``(batch, H, W, C)``, channels last.

    Output shape:
        ``(batch, K, d)``; with ``return_attention=True`` also ``(batch, K, H, W)``.

    Examples:

    >>> import numpy as np
    >>> layer = AttentiveGrouping(num_groups=3, group_dim=8, reduction=2)
    >>> groups = layer(np.random.rand(2, 5, 5, 16).astype("float32"))
    >>> tuple(groups.shape)
    (2, 3, 8)

    >>> layer = AttentiveGrouping(num_groups=2, group_dim=4, key_dim=3, return_attention=True)
    >>> groups, attention = layer(np.random.rand(1, 4, 6, 8).astype("float32"))
    >>> tuple(attention.shape)
    (1, 2, 4, 6)
    """

    def __init__(
        self,
        num_groups: int = 3,
        group_dim: int = 170,
        reduction: int = 8,
        key_dim: int | None = None,
        projection: bool = False,
        normalize: bool = True,
        return_attention: bool = False,
        kernel_initializer="glorot_uniform",
        queries_initializer=None,
        kernel_regularizer=None,
        queries_regularizer=None,
        activity_regularizer=None,
        **kwargs,
    ):
        # Keras 3 would apply an activity regularizer to every output, attention maps
        # included; keep it out of the base layer and apply it to the embeddings in call().
        super().__init__(**kwargs)
        _check_positive_int("num_groups", num_groups)
        _check_positive_int("group_dim", group_dim)
        _check_positive_int("reduction", reduction)
        if key_dim is not None:
            _check_positive_int("key_dim", key_dim)
        self.num_groups = int(num_groups)
        self.group_dim = int(group_dim)
        self.reduction = int(reduction)
        self.key_dim = None if key_dim is None else int(key_dim)
        self.projection = bool(projection)
        self.normalize = bool(normalize)
        self.return_attention = bool(return_attention)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.queries_initializer = keras.initializers.get(
            queries_initializer
            if queries_initializer is not None
            else keras.initializers.RandomNormal(stddev=1.0)
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.queries_regularizer = keras.regularizers.get(queries_regularizer)
        self.group_activity_regularizer = keras.regularizers.get(activity_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def resolved_key_dim(self, channels: int) -> int:
        """The key/query size used for an input with ``channels`` channels."""
        if self.key_dim is not None:
            return self.key_dim
        key_dim = channels // self.reduction
        if key_dim < 1:
            raise ValueError(
                f"AttentiveGrouping: reduction={self.reduction} leaves no key channels for an "
                f"input with {channels} channels (C // reduction = 0). Use a reduction <= "
                f"{channels} or pass key_dim explicitly."
            )
        return key_dim

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "AttentiveGrouping needs a known channel count (last axis); got input shape "
                f"{tuple(input_shape)}. Give the feature map a static channel dimension."
            )
        key_dim = self.resolved_key_dim(channels)
        self.key_kernel = self.add_weight(
            name="key_kernel",
            shape=(channels, key_dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.value_kernel = self.add_weight(
            name="value_kernel",
            shape=(channels, self.group_dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.queries = self.add_weight(
            name="queries",
            shape=(self.num_groups, key_dim),
            initializer=self.queries_initializer,
            regularizer=self.queries_regularizer,
        )
        if self.projection:
            self.projection_kernel = self.add_weight(
                name="projection_kernel",
                shape=(self.group_dim, self.group_dim),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs):
        shape = ops.shape(inputs)
        batch, height, width = shape[0], shape[1], shape[2]
        positions = ops.reshape(inputs, (batch, -1, shape[3]))  # (B, N, C)
        keys = ops.matmul(positions, self.key_kernel)  # (B, N, key_dim)
        values = ops.matmul(positions, self.value_kernel)  # (B, N, d)
        logits = ops.einsum("bnk,gk->bgn", keys, self.queries)  # (B, K, N)
        attention = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        groups = ops.einsum("bgn,bnd->bgd", attention, ops.cast(values, "float32"))
        if self.projection:
            groups = ops.matmul(
                ops.cast(groups, self.compute_dtype), self.projection_kernel
            )
        if self.normalize:  # float32: a float16 sum of squares makes norms differ from 1
            groups = l2_normalize(groups, clamp="squared_norm", compute_dtype="float32",
                                  output_dtype=self.compute_dtype)
        else:
            groups = ops.cast(groups, self.compute_dtype)
        if self.group_activity_regularizer is not None:
            self._add_group_activity_loss(groups)
        if not self.return_attention:
            return groups
        attention = ops.reshape(attention, (batch, self.num_groups, height, width))
        return groups, attention

    def _add_group_activity_loss(self, groups):
        # Same scaling as Keras' own activity-regularizer path (Layer.__call__): / batch size.
        loss = self.group_activity_regularizer(groups)
        batch_size = ops.cast(ops.shape(groups)[0], dtype=loss.dtype)
        self.add_loss(ops.divide_no_nan(loss, batch_size))

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        groups_shape = (batch, self.num_groups, self.group_dim)
        if not self.return_attention:
            return groups_shape
        return groups_shape, (batch, self.num_groups, height, width)

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape(inputs.shape)
        if not self.return_attention:
            return keras.KerasTensor(shapes, dtype=self.compute_dtype)
        return (
            keras.KerasTensor(shapes[0], dtype=self.compute_dtype),
            keras.KerasTensor(shapes[1], dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_groups": self.num_groups,
                "group_dim": self.group_dim,
                "reduction": self.reduction,
                "key_dim": self.key_dim,
                "projection": self.projection,
                "normalize": self.normalize,
                "return_attention": self.return_attention,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "queries_initializer": keras.initializers.serialize(
                    self.queries_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "queries_regularizer": keras.regularizers.serialize(
                    self.queries_regularizer
                ),
                "activity_regularizer": keras.regularizers.serialize(
                    self.group_activity_regularizer
                ),
            }
        )
        return config


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"AttentiveGrouping: {name} must be a positive integer, got {value!r}."
        )
