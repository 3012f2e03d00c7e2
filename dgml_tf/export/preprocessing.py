"""The evaluation preprocessing inside the exported graph, shared with the tf.data pipelines.

A served image must reach the model exactly as evaluation images do, so this module does not
re-implement anything: it applies ``pipelines.decoding.decode_rgb`` (JPEG/PNG/GIF/BMP/WebP,
grayscale and RGBA -> RGB; served images get its header check first, ``max_pixels``) and ``pipelines.transforms.eval_transform`` (shorter side resized to
``resize_size`` with antialiased bilinear, centre crop ``image_size``) to every image of a batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from pipelines.decoding import decode_rgb
from pipelines.image_limits import DEFAULT_MAX_IMAGE_PIXELS
from pipelines.transforms import eval_transform

# The protocol's ratio: resize 256 then crop 224.
EVAL_RESIZE_RATIO = 256.0 / 224.0


def default_resize_size(image_size: Sequence[int]) -> int:
    """The resize size that keeps the protocol's 256/224 ratio for a crop of ``image_size``.

    Example:
        >>> default_resize_size((224, 224)), default_resize_size((32, 32))
        (256, 37)
    """
    return int(round(max(image_size) * EVAL_RESIZE_RATIO))


def check_sizes(image_size: Sequence[int], resize_size: Optional[int]) -> tuple:
    """Validates ``image_size`` and ``resize_size``; returns ``((h, w), resize_size)``."""
    image_size = tuple(image_size)
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise ValueError(
            f"image_size must be two positive integers (height, width), got {image_size!r}."
        )
    image_size = (int(image_size[0]), int(image_size[1]))
    if image_size[0] != image_size[1]:
        raise ValueError(
            f"image_size must be square (the evaluation pipeline centre-crops squares), got "
            f"{image_size}."
        )
    if resize_size is None:
        resize_size = default_resize_size(image_size)
    resize_size = int(resize_size)
    if resize_size < image_size[0]:
        raise ValueError(
            f"resize_size={resize_size} is smaller than the crop image_size={image_size}: the "
            "centre crop would not fit. Use resize_size >= image_size (the protocol uses 256 for "
            "224 crops, i.e. round(1.143 * image size))."
        )
    return image_size, resize_size


def decode_and_preprocess_batch(
    image_bytes: tf.Tensor, image_size: Sequence[int], resize_size: int, channels: int = 3,
    max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
) -> tf.Tensor:
    """Decodes and preprocesses a batch of encoded images -> float32 (B, h, w, 3) in [0, 255].

    Images may have different sizes (each is resized on its own, hence ``map_fn``).

    Args:
        image_bytes: string (B,) of encoded images.
        image_size: the crop (h, w).
        resize_size: shorter side before the crop.
        channels: 3.
        max_pixels: each image's header is checked first (format, size, pixel count; see
            ``pipelines.decoding.check_image_header``) and an image with more pixels to decode
            fails with ``InvalidArgumentError`` before any decode; None checks nothing.
    """
    size = int(image_size[0])

    def one(encoded: tf.Tensor) -> tf.Tensor:
        return eval_transform(decode_rgb(encoded, max_pixels=max_pixels), size, resize_size)

    return tf.map_fn(
        one, image_bytes, fn_output_signature=tf.TensorSpec((size, size, channels), tf.float32)
    )
