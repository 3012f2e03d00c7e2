"""Backbone-specific pixel normalisation as a serializable layer."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="dgml_tf")
class PixelNormalization(keras.layers.Layer):
    """Maps raw pixels to what a backbone expects: optional RGB->BGR, then ``(x - mean) / std``.

    Models in this package take raw float RGB in [0, 255] (see DEVELOPERS.md); this layer is
    their first layer, so pipelines, exported signatures and services all feed the same pixels.
    ``mean`` and ``std`` are given in the output channel order and in [0, 255] units.

    Presets (class methods): :meth:`caffe` (ResNet50's ``preprocess_input``: BGR, ImageNet
    mean subtraction, no scaling), :meth:`torch` (x/255, ImageNet mean/std), :meth:`tf`
    (MobileNetV2's ``preprocess_input``: x/127.5 - 1).

    Args:
        mean: per-channel mean (one value or one per channel), [0, 255] units.
        std: per-channel standard deviation (one value or one per channel), [0, 255] units.
        reverse_channels: if True, reverse the channel axis first (RGB -> BGR).
        **kwargs: base layer arguments.

    Examples:

    >>> import numpy as np
    >>> layer = PixelNormalization.caffe()
    >>> out = layer(np.full((1, 1, 1, 3), 255.0, "float32"))
    >>> [round(float(v), 3) for v in np.asarray(out)[0, 0, 0]]
    [151.061, 138.221, 131.32]
    """

    def __init__(
        self,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        reverse_channels: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in np.atleast_1d(mean)]
        self.std = [float(v) for v in np.atleast_1d(std)]
        if any(v <= 0 for v in self.std):
            raise ValueError(f"PixelNormalization: std must be positive, got {self.std}.")
        self.reverse_channels = bool(reverse_channels)

    @classmethod
    def caffe(cls, **kwargs) -> "PixelNormalization":
        """``keras.applications.resnet50.preprocess_input``: BGR, minus ImageNet BGR mean."""
        return cls(mean=(103.939, 116.779, 123.68), std=1.0, reverse_channels=True, **kwargs)

    @classmethod
    def torch(cls, **kwargs) -> "PixelNormalization":
        """torchvision's ImageNet transform: x/255, minus mean, over std (RGB)."""
        mean = [255.0 * v for v in (0.485, 0.456, 0.406)]
        std = [255.0 * v for v in (0.229, 0.224, 0.225)]
        return cls(mean=mean, std=std, **kwargs)

    @classmethod
    def tf(cls, **kwargs) -> "PixelNormalization":
        """``keras.applications.mobilenet_v2.preprocess_input``: x/127.5 - 1."""
        return cls(mean=127.5, std=127.5, **kwargs)

    def build(self, input_shape):
        channels = input_shape[-1]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(
                    f"PixelNormalization: {name} has {len(values)} values but the input has "
                    f"{channels} channels; give one value or one per channel."
                )

    def call(self, inputs):
        if self.reverse_channels:
            inputs = ops.flip(inputs, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=inputs.dtype)
        inverse_std = ops.convert_to_tensor([1.0 / v for v in self.std], dtype=inputs.dtype)
        return (inputs - mean) * inverse_std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mean": self.mean, "std": self.std, "reverse_channels": self.reverse_channels}
        )
        return config
