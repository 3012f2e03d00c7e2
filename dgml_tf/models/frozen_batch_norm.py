"""Batch normalisation whose statistics stay frozen while its scale and offset train."""

import keras


@keras.saving.register_keras_serializable(package="dgml_tf")
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """A BatchNormalization layer that always normalises with its moving statistics.

    Fine-tuning a pretrained backbone on small metric-learning batches (56 classes x 2 images)
    would corrupt its ImageNet statistics, so the authors' code keeps every BatchNorm in
    inference mode while ``gamma`` and ``beta`` keep training. ``training=True`` is ignored:
    the moving mean and variance are never updated, and the layer's output does not depend on
    batch composition.

    Args:
        **kwargs: the arguments of ``keras.layers.BatchNormalization``.

    Examples:

    >>> import numpy as np
    >>> layer = FrozenBatchNormalization()
    >>> out = layer(np.ones((4, 3), "float32") * 5.0, training=True)
    >>> float(layer.moving_mean.numpy()[0])
    0.0
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def freeze_batch_norm_statistics(model: keras.Model) -> keras.Model:
    """Returns a copy of a functional ``model`` with every BatchNorm frozen, weights kept.

    Each ``keras.layers.BatchNormalization`` (nested models included) is replaced by a
    :class:`FrozenBatchNormalization` with the same configuration and weights; other layers are
    cloned unchanged.

    Args:
        model: a built functional or sequential Keras model.

    Returns:
        A new model with the same weights.
    """

    def clone_layer(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FrozenBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    frozen = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    frozen.set_weights(model.get_weights())
    return frozen
