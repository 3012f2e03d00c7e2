"""Backbone registry: raw RGB pixels in [0, 255] -> channels-last feature map.

Every backbone includes its own pixel normalisation as its first layers (DEVELOPERS.md contract),
so the same raw images feed every model.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import keras

from dgml_tf.layers.pixel_normalization import PixelNormalization
from dgml_tf.models.conv_frozen_batch_norm import fold_frozen_batch_norm
from dgml_tf.models.frozen_batch_norm import freeze_batch_norm_statistics
from dgml_tf.models.layer_walk import flat_layers

BackboneBuilder = Callable[[Sequence[int], object, bool, "str | None"], keras.Model]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(input_shape, weights, freeze_batch_norm, feature_layer)``.

    ``feature_layer`` is None (the backbone's last feature map) or the name of one of its
    layers whose output becomes the feature map; :func:`truncate_at` does that for a flat
    functional network.
    """

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
    feature_layer: str | None = None,
    trainable_from: str | None = None,
    fold_batch_norm: bool = False,
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
        feature_layer: None for the backbone's last feature map, or the name of an inner
            layer whose output is used instead, e.g. a stride-16 map that gives attention more
            positions on small inputs: ``"conv4_block6_out"`` (resnet50, 1024 channels),
            ``"features_14_conv_0_2"`` (torchvision mobilenet_v2, 576 channels),
            ``"block_13_expand_relu"`` (keras mobilenet_v2), ``"stage1_pool"`` (small_cnn).
            Layers after it are dropped, which also saves their compute.
        trainable_from: None to train every backbone layer, or the name of a layer: the layers
            before it (in topological order) are frozen (``trainable = False``: no weight
            updates, BatchNorm in inference mode, and no backward pass through them), the
            layer itself and those after it train. Fine-tuning only the top of a pretrained
            network is how it fits on a CPU budget.
        fold_batch_norm: with ``freeze_batch_norm``, fold each frozen BatchNorm into the
            linear convolution before it (:func:`~dgml_tf.models.conv_frozen_batch_norm.
            fold_frozen_batch_norm`): the same function and gradients, a faster step. The
            training CLI turns it on (``--fold_batch_norm``).

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
    network = _BACKBONES[name](tuple(input_shape), weights, freeze_batch_norm, feature_layer)
    if trainable_from is not None:
        freeze_layers_before(network, trainable_from)
    if fold_batch_norm and freeze_batch_norm:
        # After trainable_from: a pair split by it (conv frozen, BatchNorm not) is not folded.
        network = fold_frozen_batch_norm(network)
    return network


def _feature_map_layer_names(model: keras.Model, last: int = 30) -> str:
    """The names of the layers with a 4-D output, for error messages (the last ``last``)."""
    names = []
    for layer in flat_layers(model):
        output = getattr(layer, "output", None)
        if output is not None and len(output.shape) == 4:
            names.append(layer.name)
    if len(names) <= last:
        return ", ".join(names)
    return f"(last {last} of {len(names)}) " + ", ".join(names[-last:])


def freeze_layers_before(model: keras.Model, layer_name: str) -> keras.Model:
    """Sets ``trainable = False`` on every layer of ``model`` that comes before ``layer_name``.

    Layers are visited in topological order (nested models included). Returns ``model``.

    Raises:
        ValueError: no layer of that name; the message lists the feature-map layers.
    """
    layers = list(flat_layers(model))
    names = [layer.name for layer in layers]
    if layer_name not in names:
        raise ValueError(
            f"trainable_from={layer_name!r}: {model.name} has no layer of that name. Its "
            f"feature-map layers are: {_feature_map_layer_names(model)}."
        )
    for layer in layers[: names.index(layer_name)]:
        layer.trainable = False
    return model


def truncate_at(network: keras.Model, feature_layer: str | None, backbone: str) -> keras.Model:
    """``network`` (flat functional) cut after ``feature_layer``; unchanged for None.

    Raises:
        ValueError: no such layer, or its output is not a ``(batch, h, w, C)`` feature map.
    """
    if feature_layer is None:
        return network
    try:
        layer = network.get_layer(feature_layer)
    except ValueError:
        layer = None
    if layer is None or len(layer.output.shape) != 4:
        problem = "has no layer" if layer is None else "has no feature map at layer"
        raise ValueError(
            f"feature_layer={feature_layer!r}: {backbone} {problem} of that name. Choose one "
            f"of its feature-map layers: {_feature_map_layer_names(network)}."
        )
    return keras.Model(network.inputs, layer.output, name=network.name)


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
def _resnet50(input_shape, weights, freeze_batch_norm, feature_layer=None):
    _check_weights_file(weights, "resnet50", ("imagenet",))
    network = truncate_at(keras.applications.ResNet50(
        include_top=False, weights=_applications_weights(weights), input_shape=input_shape
    ), feature_layer, "resnet50")
    # resnet50.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet BGR mean.
    return _wrap(PixelNormalization.caffe(name="resnet50_preprocess"), network, input_shape,
                 freeze_batch_norm, "resnet50")


@register_backbone("small_cnn")
def _small_cnn(input_shape, weights, freeze_batch_norm, feature_layer=None):
    from dgml_tf.models.small_cnn import build_small_cnn

    _check_weights_file(weights, "small_cnn", ())
    return truncate_at(build_small_cnn(input_shape, freeze_batch_norm=freeze_batch_norm,
                                       weights=weights, name="small_cnn_backbone"),
                       feature_layer, "small_cnn")


@register_backbone("mobilenet_v2")
def _mobilenet_v2(input_shape, weights, freeze_batch_norm, feature_layer=None):
    torch_file = isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(
        (".pth", ".pt"))
    if weights == "torchvision" or torch_file:
        from dgml_tf.models.torchvision_mobilenet_v2 import build_mobilenet_v2_torchvision

        backbone = build_mobilenet_v2_torchvision(
            input_shape, weights=weights, include_top=False, freeze_batch_norm=freeze_batch_norm,
            name="mobilenet_v2_torchvision")
        backbone = truncate_at(backbone, feature_layer, "mobilenet_v2 (torchvision)")
        inputs = keras.Input(input_shape, name="image")
        return keras.Model(inputs, backbone(inputs), name="mobilenet_v2_backbone")
    _check_weights_file(weights, "mobilenet_v2", ("imagenet", "torchvision"))
    network = truncate_at(keras.applications.MobileNetV2(
        include_top=False, weights=_applications_weights(weights), input_shape=input_shape
    ), feature_layer, "mobilenet_v2")
    # mobilenet_v2.preprocess_input ("tf"): x / 127.5 - 1.
    return _wrap(PixelNormalization.tf(name="mobilenet_v2_preprocess"), network, input_shape,
                 freeze_batch_norm, "mobilenet_v2")
