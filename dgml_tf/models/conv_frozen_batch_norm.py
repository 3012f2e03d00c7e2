"""A convolution and the frozen BatchNorm after it, computed as one convolution.

A :class:`~dgml_tf.models.frozen_batch_norm.FrozenBatchNormalization` is an affine map per
channel, ``y = s * (x - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, so after a linear
convolution it folds into the convolution's kernel and bias: ``conv(x, W * s) + (b - mean) * s +
beta``. Training sees the same function and the same gradients (``gamma`` and ``beta`` still
train through ``s``), but the backbone no longer spends two elementwise passes over every
activation forward and three backward on the BatchNorms (~10% of a ResNet50 training step on a
CPU; ``bench/train_step_speed.py``).
"""

from __future__ import annotations

import keras
from keras import ops

from dgml_tf.models.frozen_batch_norm import (FrozenBatchNormalization,
                                              freeze_batch_norm_statistics)
from dgml_tf.models.layer_walk import flat_layers


@keras.saving.register_keras_serializable(package="dgml_tf")
class ConvFrozenBatchNorm(keras.layers.Conv2D):
    """``Conv2D`` (linear) followed by a frozen BatchNorm, as one convolution.

    Holds the convolution's ``kernel`` and ``bias`` and the BatchNorm's ``gamma``, ``beta``,
    ``moving_mean`` and ``moving_variance``; the statistics never update, ``gamma``, ``beta``,
    kernel and bias train. The folded kernel is computed in float32 and cast to the compute
    dtype, so mixed precision rounds once, after the fold.

    Args:
        batch_norm_epsilon: the BatchNorm's ``epsilon``.
        batch_norm_center: whether the BatchNorm has ``beta``.
        batch_norm_scale: whether the BatchNorm has ``gamma``.
        **kwargs: the arguments of ``keras.layers.Conv2D``; ``activation`` must be linear
            (the BatchNorm comes after the convolution, before any activation).

    Examples:

    >>> import numpy as np
    >>> layer = ConvFrozenBatchNorm(filters=4, kernel_size=3, padding="same")
    >>> tuple(layer(np.zeros((2, 8, 8, 3), "float32")).shape)
    (2, 8, 8, 4)
    >>> [w.name for w in layer.weights]
    ['kernel', 'bias', 'gamma', 'beta', 'moving_mean', 'moving_variance']
    """

    def __init__(self, batch_norm_epsilon: float = 1e-3, batch_norm_center: bool = True,
                 batch_norm_scale: bool = True, **kwargs):
        kwargs.pop("autocast", None)
        # Variables are read in float32 (the fold), inputs are cast in call().
        super().__init__(autocast=False, **kwargs)
        if self.activation not in (None, keras.activations.linear):
            raise ValueError(
                f"ConvFrozenBatchNorm {self.name!r}: the convolution must be linear (the "
                f"BatchNorm follows it), got activation={kwargs.get('activation')!r}.")
        if self.data_format != "channels_last":
            raise ValueError(f"ConvFrozenBatchNorm {self.name!r} supports channels_last only.")
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.batch_norm_center = bool(batch_norm_center)
        self.batch_norm_scale = bool(batch_norm_scale)

    def build(self, input_shape):
        super().build(input_shape)
        shape = (self.filters,)

        def weight(name, initializer, trainable):
            return self.add_weight(name=name, shape=shape, initializer=initializer,
                                   trainable=trainable, dtype=self.dtype, autocast=False)

        # BatchNormalization's weight order, so get_weights() = conv's + BatchNorm's.
        self.gamma = weight("gamma", "ones", True) if self.batch_norm_scale else None
        self.beta = weight("beta", "zeros", True) if self.batch_norm_center else None
        self.moving_mean = weight("moving_mean", "zeros", False)
        self.moving_variance = weight("moving_variance", "ones", False)

    def folded_kernel_and_bias(self):
        """``(W * s, (b - mean) * s + beta)`` in the variable dtype (float32)."""
        scale = ops.rsqrt(ops.add(self.moving_variance, self.batch_norm_epsilon))
        if self.gamma is not None:
            scale = ops.multiply(scale, self.gamma)
        shift = ops.negative(self.moving_mean)
        if self.use_bias:
            shift = ops.add(shift, self.bias)
        shift = ops.multiply(shift, scale)
        if self.beta is not None:
            shift = ops.add(shift, self.beta)
        return ops.multiply(self.kernel, scale), shift

    def call(self, inputs):
        kernel, bias = self.folded_kernel_and_bias()
        dtype = self.compute_dtype
        outputs = self.convolution_op(ops.cast(inputs, dtype), ops.cast(kernel, dtype))
        bias = ops.reshape(ops.cast(bias, dtype), (1,) * (self.rank + 1) + (self.filters,))
        return ops.add(outputs, bias)

    # Conv2D saves only kernel and bias; Layer's own versions save every variable in order.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        return {**super().get_config(), "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_center": self.batch_norm_center,
                "batch_norm_scale": self.batch_norm_scale}


@keras.saving.register_keras_serializable(package="dgml_tf")
class FoldedBatchNormalization(keras.layers.Layer):
    """Where a frozen BatchNorm was before its map moved into the convolution: the identity.

    Keeps the BatchNorm's name in the graph, so layer names a user passes
    (``feature_layer``, ``train_backbone_from``) keep meaning the same place.
    """

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _foldable(conv, batch_norm) -> bool:
    """Whether ``batch_norm`` can fold into ``conv``, the layer whose output it reads."""
    # One call each, the BatchNorm the conv's only reader: folding cannot change another path.
    used_once = (len(conv._inbound_nodes) == 1 and len(conv._outbound_nodes) == 1
                 and len(batch_norm._inbound_nodes) == 1)
    return (type(conv) is keras.layers.Conv2D and used_once
            and conv.activation in (None, keras.activations.linear)
            and conv.data_format == "channels_last" and conv.groups == 1
            and not getattr(conv, "lora_enabled", False) and conv.kernel_constraint is None
            and conv.bias_constraint is None
            and batch_norm.axis in (-1, len(batch_norm.input.shape) - 1)
            and len(batch_norm.input.shape) == 4 and conv.trainable == batch_norm.trainable
            and batch_norm.dtype_policy.name == conv.dtype_policy.name
            and all(getattr(batch_norm, f"{kind}_{what}") is None
                    for kind in ("gamma", "beta") for what in ("regularizer", "constraint")))


def _foldable_pairs(model: keras.Model) -> dict:
    """``{id(conv): batch_norm}`` for every foldable pair, nested models included."""
    pairs = {}
    for layer in flat_layers(model):
        if type(layer) is FrozenBatchNormalization and len(layer._inbound_nodes) == 1:
            source = layer._inbound_nodes[0].input_tensors
            producer = source[0]._keras_history.operation if len(source) == 1 else None
            if producer is not None and _foldable(producer, layer):
                pairs[id(producer)] = layer
    return pairs


def fold_frozen_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of functional ``model`` with each linear ``Conv2D`` -> frozen BatchNorm pair folded.

    Each pair becomes a :class:`ConvFrozenBatchNorm` (the conv's name and all six weights) and a
    :class:`FoldedBatchNormalization` (the BatchNorm's name, no computation). Other layers,
    nested models included, are cloned with their weights. Pairs that cannot fold (a conv read
    by another layer too, an activation inside the conv, depthwise or grouped convs, BatchNorms
    that train their statistics, different ``trainable`` or dtype policy) are kept as they are.

    Args:
        model: a built functional model, typically after
            :func:`~dgml_tf.models.frozen_batch_norm.freeze_batch_norm_statistics`.

    Returns:
        A new model computing the same function (to float rounding) with the same trainable
        values, or ``model`` itself when nothing folds.
    """
    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded_batch_norms = {id(bn) for bn in pairs.values()}
    clones: dict = {}

    def clone(layer):
        if id(layer) in pairs:
            batch_norm = pairs[id(layer)]
            new = ConvFrozenBatchNorm(
                batch_norm_epsilon=batch_norm.epsilon, batch_norm_center=batch_norm.center,
                batch_norm_scale=batch_norm.scale, **layer.get_config())
            sources = (layer, batch_norm)
        elif id(layer) in folded_batch_norms:
            new, sources = FoldedBatchNormalization(name=layer.name), ()
        else:
            new, sources = layer.__class__.from_config(layer.get_config()), (layer,)
        clones[id(layer)] = (new, sources)
        return new

    folded = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for new, sources in clones.values():
        weights = [w for source in sources for w in source.get_weights()]
        if weights:
            new.set_weights(weights)
    return folded


def folded_pair_count(model: keras.Model) -> int:
    """How many :class:`ConvFrozenBatchNorm` layers ``model`` holds (nested models included)."""
    return sum(isinstance(layer, ConvFrozenBatchNorm) for layer in flat_layers(model))


def fold_batch_norm_for_inference(model: keras.Model) -> keras.Model:
    """A copy of functional ``model`` for inference: each BatchNorm after a linear ``Conv2D``
    becomes that convolution's constant kernel and bias (a plain ``Conv2D``).

    At inference (``training=False``) every BatchNorm is the affine map of its moving statistics,
    trainable or not, so each foldable pair (:func:`fold_frozen_batch_norm`'s rules) becomes one
    ``Conv2D(use_bias=True)`` holding ``W * s`` and ``(b - mean) * s + beta``, computed once in
    float32. TensorFlow's graph optimiser then runs that convolution, its bias add and a
    following ReLU as one fused kernel, where the BatchNorm cost two more passes over the
    activations (and a ``ConvFrozenBatchNorm`` recomputes its fold on every call). The serving
    export uses it (``dgml_tf.export.export_for_serving``).

    The copy computes ``model(x, training=False)`` to float rounding. It is not for training:
    the statistics and ``gamma`` are gone, and BatchNorms stay frozen in it.

    Args:
        model: a built functional (or sequential) model.

    Returns:
        The folded copy, or ``model`` itself when no pair folds.

    Example:
        >>> from dgml_tf.models import build_embedding_model  # doctest: +SKIP
        >>> served = fold_batch_norm_for_inference(build_embedding_model(backbone="small_cnn"))  # doctest: +SKIP
    """
    folded = fold_frozen_batch_norm(freeze_batch_norm_statistics(model))
    if folded is model or not folded_pair_count(folded):
        return model
    weights_of: dict = {}

    def clone(layer):
        if isinstance(layer, ConvFrozenBatchNorm):
            kernel, bias = layer.folded_kernel_and_bias()
            config = keras.layers.Conv2D.get_config(layer)
            config.pop("autocast", None)  # a plain Conv2D casts its float32 kernel itself
            new = keras.layers.Conv2D.from_config({**config, "use_bias": True})
            weights = [ops.convert_to_numpy(kernel), ops.convert_to_numpy(bias)]
        else:
            new, weights = layer.__class__.from_config(layer.get_config()), layer.get_weights()
        weights_of[id(new)] = (new, weights)
        return new

    plain = keras.models.clone_model(folded, clone_function=clone, recursive=True)
    for new, weights in weights_of.values():
        if weights:
            new.set_weights(weights)
    return plain
