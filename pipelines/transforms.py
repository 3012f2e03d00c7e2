"""Geometric transforms of the train and evaluation pipelines (TF ops, graph-safe, stateless).

Outputs are float32 RGB in [0, 255]; backbone-specific normalisation (e.g. ImageNet mean/std)
is the model's job (its first layers), per the contract in DEVELOPERS.md.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
    # Antialiased bilinear: 500 px -> 224 px downscales without aliasing; a triangle filter has
    # non-negative weights, so values stay in [0, 255].
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([height, width]),
                              method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes so the shorter side equals ``size``, keeping the aspect ratio (float32 output).

    The longer side is ``floor(size * long / short)`` as in torchvision's ``Resize(size)``.
    Small images are upscaled.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    short = tf.minimum(height, width)
    new_height = tf.cast(tf.floor(size * height / short), tf.int32)
    new_width = tf.cast(tf.floor(size * width / short), tf.int32)
    new_height = tf.where(height <= width, size, new_height)
    new_width = tf.where(width < height, size, new_width)
    return _resize(image, new_height, new_width)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centred ``size`` x ``size`` window (top/left offsets round down)."""
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top:top + size, left:left + size, :]


def eval_transform(image: tf.Tensor, image_size: int, resize_size: int) -> tf.Tensor:
    """Resize the shorter side to ``resize_size``, then centre-crop ``image_size`` (float32).

    Example:
        >>> eval_transform(tf.zeros([375, 500, 3], tf.uint8), 224, 256).shape
        TensorShape([224, 224, 3])
    """
    if resize_size < image_size:
        raise ValueError(
            f"resize_size ({resize_size}) must be >= image_size ({image_size}): the centre crop "
            "is taken from the resized image."
        )
    cropped = center_crop(resize_shorter_side(image, resize_size), image_size)
    return tf.ensure_shape(cropped, [image_size, image_size, 3])


def random_crop_window(
    image_shape: tf.Tensor,
    seed: tf.Tensor,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
) -> tf.Tensor:
    """The random resized crop's window ``[top, left, height, width]`` (int32) for an image of
    shape ``image_shape`` (only its first two entries are used).

    Stateless: the same ``seed`` (int tensor of shape [2]) and shape give the same window, so the
    window can be computed before decoding (JPEG crops decode only that window). The area
    fraction is drawn from ``scale`` and the aspect ratio from ``ratio``; after 10 failed draws
    the whole image is used.
    """
    shape = tf.stack([image_shape[0], image_shape[1], 3])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        area_range=tuple(scale),
        aspect_ratio_range=tuple(ratio),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def crop_to_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """``image[top:top + height, left:left + width]`` for ``window = [top, left, height, width]``."""
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3], :]


def random_resized_crop(
    image: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
) -> tf.Tensor:
    """Crops a random window (area fraction in ``scale``, aspect in ``ratio``), resizes to ``size``.

    Stateless: the same ``seed`` (int tensor of shape [2]) gives the same crop.
    """
    window = crop_to_window(image, random_crop_window(tf.shape(image), seed, scale, ratio))
    return tf.ensure_shape(_resize(window, size, size), [size, size, 3])


def crop_and_flip_seeds(seed: tf.Tensor) -> tuple:
    """The two independent seeds (crop, flip) that :func:`train_transform` derives from ``seed``."""
    return (tf.random.experimental.stateless_fold_in(seed, 0),
            tf.random.experimental.stateless_fold_in(seed, 1))


def resize_and_flip(window: tf.Tensor, size: int, flip_seed: tf.Tensor, flip: bool = True) -> tf.Tensor:
    """Resizes a cropped window to ``size`` x ``size`` and flips it horizontally at random."""
    image = tf.ensure_shape(_resize(window, size, size), [size, size, 3])
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def train_transform(
    image: tf.Tensor,
    image_size: int,
    seed: tf.Tensor,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    flip: bool = True,
) -> tf.Tensor:
    """Random resized crop to ``image_size`` then a random horizontal flip (float32).

    ``seed`` (int tensor [2]) fixes both draws, so a stream is reproducible whatever the
    parallelism of the map that calls this.
    """
    crop_seed, flip_seed = crop_and_flip_seeds(seed)
    window = crop_to_window(image, random_crop_window(tf.shape(image), crop_seed, scale, ratio))
    return resize_and_flip(window, image_size, flip_seed, flip)
