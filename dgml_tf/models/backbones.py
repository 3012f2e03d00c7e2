"""Backbone registry: raw RGB pixels in [0, 255] -> channels-last feature map.

Every backbone includes its own pixel normalisation as its first layers (DEVELOPERS.md contract),
so the same raw images feed every model.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import keras

from dgml_tf.layers.pixel_normalization import PixelNormalization
from dgml_tf.models.frozen_batch_norm import freeze_batch_norm_statistics

BackboneBuilder = Callable[[Sequence[int], object, bool], keras.Model]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(input_shape, weights, freeze_batch_norm)`` as ``name``."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _BACKBONES:
            raise ValueError(f"A backbone named {name!r} is already registered.")
        _BACKBONES[name] = builder
        return builder

    return decorator


def available_backbones() -> list[str]:
    """Names accepted by :func:`get_backbone`."""
    return sorted(_BACKBONES)


def get_backbone(
    name: str,
    input_shape: Sequence[int | None] = (224, 224, 3),
    weights: str | os.PathLike | None = None,
    freeze_batch_norm: bool = True,
) -> keras.Model:
    """Builds a registered backbone.

    Args:
        name: one of :func:`available_backbones` ("resnet50", "small_cnn", "mobilenet_v2").
        input_shape: ``(H, W, 3)`` of raw RGB images in [0, 255].
        weights: ``None`` (random init), a pretrained-weights name the backbone knows
            ("imagenet" for resnet50 and mobilenet_v2, "torchvision" for mobilenet_v2), or the
            path of a local weights file.
        freeze_batch_norm: keep BatchNorm statistics frozen (inference mode) while training;
            gamma and beta still train.

    Returns:
        A ``keras.Model`` named ``"<name>_backbone"`` mapping images to a
        ``(batch, h, w, C)`` feature map.

    Raises:
        ValueError: unknown name or weights.
        FileNotFoundError: ``weights`` is a path that does not exist.
    """
    if name not in _BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of {available_backbones()}."
        )
    if len(tuple(input_shape)) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"Backbones take RGB images (H, W, 3); got input_shape={tuple(input_shape)}. "
            "Repeat grey images to 3 channels."
        )
    return _BACKBONES[name](tuple(input_shape), weights, freeze_batch_norm)


def _check_weights_file(weights, backbone: str, names: Sequence[str]) -> None:
    if weights is None or weights in names:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"{backbone}: weights must be None, one of {list(names)} or a file path.")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{backbone}: weights file {os.fspath(weights)!r} does not exist. Pass None, one of "
            f"{list(names)}, or the path of an existing Keras weights file (.h5/.weights.h5)."
        )


def _applications_weights(weights):
    """keras.applications' ``weights``: None, "imagenet" or a path string."""
    return weights if weights in (None, "imagenet") else os.fspath(weights)


def _wrap(preprocessing, network: keras.Model, input_shape, freeze: bool, name: str):
    if freeze:
        network = freeze_batch_norm_statistics(network)
    inputs = keras.Input(input_shape, name="image")
    return keras.Model(inputs, network(preprocessing(inputs)), name=f"{name}_backbone")


@register_backbone("resnet50")
def _resnet50(input_shape, weights, freeze_batch_norm):
    _check_weights_file(weights, "resnet50", ("imagenet",))
    network = keras.applications.ResNet50(
        include_top=False, weights=_applications_weights(weights), input_shape=input_shape
    )
    # resnet50.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet BGR mean.
    return _wrap(PixelNormalization.caffe(name="resnet50_preprocess"), network, input_shape,
                 freeze_batch_norm, "resnet50")


@register_backbone("small_cnn")
def _small_cnn(input_shape, weights, freeze_batch_norm):
    from dgml_tf.models.small_cnn import build_small_cnn

    _check_weights_file(weights, "small_cnn", ())
    return build_small_cnn(input_shape, freeze_batch_norm=freeze_batch_norm, weights=weights,
                           name="small_cnn_backbone")


@register_backbone("mobilenet_v2")
def _mobilenet_v2(input_shape, weights, freeze_batch_norm):
    torch_file = isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(
        (".pth", ".pt"))
    if weights == "torchvision" or torch_file:
        from dgml_tf.models.torchvision_mobilenet_v2 import build_mobilenet_v2_torchvision

        backbone = build_mobilenet_v2_torchvision(
            input_shape, weights=weights, include_top=False, freeze_batch_norm=freeze_batch_norm,
            name="mobilenet_v2_torchvision")
        inputs = keras.Input(input_shape, name="image")
        return keras.Model(inputs, backbone(inputs), name="mobilenet_v2_backbone")
    _check_weights_file(weights, "mobilenet_v2", ("imagenet", "torchvision"))
    network = keras.applications.MobileNetV2(
        include_top=False, weights=_applications_weights(weights), input_shape=input_shape
    )
    # mobilenet_v2.preprocess_input ("tf"): x / 127.5 - 1.
    return _wrap(PixelNormalization.tf(name="mobilenet_v2_preprocess"), network, input_shape,
                 freeze_batch_norm, "mobilenet_v2")
