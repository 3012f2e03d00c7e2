"""A small convolutional backbone for small images (Fashion-MNIST, glyphs) on CPU."""

from __future__ import annotations

from typing import Sequence

import keras

from dgml_tf.layers.pixel_normalization import PixelNormalization
from dgml_tf.models.frozen_batch_norm import freeze_batch_norm_statistics

# Fashion-MNIST training-set pixel statistics (x/255): what this backbone is sized for.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def build_small_cnn(
    input_shape: Sequence[int] = (32, 32, 3),
    filters: Sequence[int] = (32, 64, 128),
    freeze_batch_norm: bool = False,
    weights: str | None = None,
    name: str = "small_cnn",
) -> keras.Model:
    """Builds a conv-BN-ReLU x2 + max-pool stack per entry of ``filters``.

    Input: raw RGB in [0, 255] (grey images repeated to 3 channels); normalised inside with
    Fashion-MNIST statistics (x/255, minus 0.2860, over 0.3530). Output: the last feature map,
    e.g. ``(4, 4, 128)`` for 32x32 inputs and the default filters.

    Args:
        input_shape: ``(H, W, C)``; H and W must survive ``len(filters)`` halvings.
        filters: channels of each stage.
        freeze_batch_norm: use :class:`FrozenBatchNormalization` (statistics never update).
            Only sensible with trained ``weights``; a randomly initialised backbone needs
            ``False``.
        weights: None (random init) or a path to a Keras weights file saved from this
            architecture with ``freeze_batch_norm=False`` (Keras keys weights files by layer
            class, so they are always read into plain BatchNorm layers, frozen afterwards).
        name: model name.

    Returns:
        A ``keras.Model`` from raw pixels to the feature map.
    """
    height, width = input_shape[0], input_shape[1]
    min_size = 2 ** len(filters)
    if height is not None and width is not None and min(height, width) < min_size:
        raise ValueError(
            f"small_cnn with {len(filters)} stages halves the image {len(filters)} times and "
            f"needs inputs of at least {min_size}x{min_size}; got {height}x{width}. Use a "
            "larger input_shape or fewer filters."
        )
    inputs = keras.Input(tuple(input_shape), name="image")
    x = PixelNormalization(
        mean=255.0 * FASHION_MNIST_MEAN, std=255.0 * FASHION_MNIST_STD, name="normalize"
    )(inputs)
    for stage, channels in enumerate(filters):
        for conv in range(2):
            # Bias-free conv: the following BatchNorm's beta plays the bias.
            x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                    name=f"stage{stage}_conv{conv}")(x)
            x = keras.layers.BatchNormalization(name=f"stage{stage}_bn{conv}")(x)
            x = keras.layers.ReLU(name=f"stage{stage}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    if freeze_batch_norm:
        model = freeze_batch_norm_statistics(model)
    return model
