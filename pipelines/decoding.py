"""Decoding image bytes (or in-memory arrays) to 3-channel RGB uint8 tensors.

Grayscale, CMYK/YCCK JPEGs, RGBA and palette PNGs all come out as RGB, matching Pillow's
``Image.convert("RGB")`` (alpha is dropped, not composited). JPEGs use the accurate integer
IDCT so decoded pixels equal Pillow's/libjpeg's defaults instead of the fast approximation.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


# One MCU (at most 16 px with 2x chroma subsampling).
_JPEG_MARGIN = 16


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 RGB of shape (H, W, 3).

    Args:
        data: a scalar string tensor holding the encoded file.

    Returns:
        uint8 tensor (H, W, 3). Raises ``tf.errors.InvalidArgumentError`` (at run time) for
        corrupt, truncated or non-image data; the pipelines filter those out beforehand.

    Example:
        >>> image = decode_rgb(tf.io.read_file("photo.jpg"))  # doctest: +SKIP
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return tf.ensure_shape(image, [None, None, 3])


def decode_rgb_window(data: tf.Tensor, window_of: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes only a window of the image: ``window_of(shape)`` -> ``[top, left, height, width]``.

    JPEGs are read with ``decode_and_crop_jpeg`` (the header gives the shape, only the window is
    decoded), which is what makes random-resized-crop training cheap on large photos; other
    formats are decoded whole and sliced. Pixels equal ``decode_rgb`` followed by the slice.

    Args:
        data: scalar string tensor of the encoded file.
        window_of: maps the image shape (int32 [3]) to the int32 window.

    Returns:
        uint8 RGB (height, width, 3).
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        top, left, height, width = tf.unstack(window_of(shape))
        # libjpeg's chroma upsampling replicates the edge pixels of a cropped decode, so decode a
        # margin around the window (clipped to the image) and cut it off: pixels then equal a
        # full decode.
        top0 = tf.maximum(top - _JPEG_MARGIN, 0)
        left0 = tf.maximum(left - _JPEG_MARGIN, 0)
        bottom1 = tf.minimum(top + height + _JPEG_MARGIN, shape[0])
        right1 = tf.minimum(left + width + _JPEG_MARGIN, shape[1])
        padded = tf.io.decode_and_crop_jpeg(
            data, tf.stack([top0, left0, bottom1 - top0, right1 - left0]), channels=3,
            dct_method="INTEGER_ACCURATE",
        )
        return padded[top - top0:top - top0 + height, left - left0:left - left0 + width, :]

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        window = window_of(tf.shape(image))
        return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3], :]

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other), [None, None, 3])


def read_rgb(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes the image file at ``path`` (scalar string) to uint8 RGB (H, W, 3)."""
    return decode_rgb(tf.io.read_file(path))


def array_to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Makes an in-memory image (H, W, C) with C in {1, 3, 4} RGB: gray is repeated, alpha dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.repeat(image, 3, axis=-1)
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    raise ValueError(
        f"in-memory images must have 1, 3 or 4 channels (gray, RGB, RGBA), got shape {image.shape}."
    )
