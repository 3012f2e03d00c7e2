"""Turns per-group attention maps into images a person can read.

Each group's map (a softmax over the h*w feature positions) is upsampled bilinearly to the input
crop, normalised to [0, 1], coloured with a colormap and blended over the image: one panel per
group (method.md, "Interpretation maps").
"""

from __future__ import annotations

import numpy as np


def upsample_attention(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsamples attention maps to an image size.

    Args:
        attention: (..., h, w) maps, e.g. (K, h, w) for one image or (B, K, h, w).
        size: (height, width) of the target image.

    Returns:
        float32 array (..., height, width).

    Example:
        >>> upsample_attention(np.ones((3, 7, 7)) / 49, (224, 224)).shape
        (3, 224, 224)
    """
    import tensorflow as tf

    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim < 2:
        raise ValueError(f"attention must have at least 2 dims (h, w); got shape {attention.shape}.")
    lead, (h, w) = attention.shape[:-2], attention.shape[-2:]
    flat = attention.reshape((-1, h, w, 1))
    # half_pixel_centers bilinear: each feature cell covers its receptive block of the crop.
    resized = tf.image.resize(flat, size, method="bilinear").numpy()
    return resized.reshape(lead + tuple(size))


def normalize_maps(maps: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Min-max normalises each (H, W) map of (..., H, W) to [0, 1]; a constant map becomes 0."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    high = maps.max(axis=(-2, -1), keepdims=True)
    span = high - low
    return np.where(span > eps, (maps - low) / np.maximum(span, eps), 0.0).astype(np.float32)


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Maps a [0, 1] heat map (H, W) to uint8 RGB (H, W, 3) with a matplotlib colormap."""
    try:
        from matplotlib import colormaps
    except ImportError as err:  # optional extra
        raise ImportError(
            "Attention figures need matplotlib: pip install 'dgml-tf[explain]'."
        ) from err
    rgba = colormaps[cmap](np.clip(heat, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def blend_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5,
                  cmap: str = "jet") -> np.ndarray:
    """Blends a coloured [0, 1] heat map over an RGB image.

    Args:
        image: (H, W, 3) or (H, W) pixels in [0, 255] (uint8 or float).
        heat: (H, W) map in [0, 1], same size as the image.
        alpha: weight of the heat map colour (0 = image only, 1 = heat map only).
        cmap: matplotlib colormap name.

    Returns:
        uint8 (H, W, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}.")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[:2] != heat.shape:
        raise ValueError(
            f"heat map {heat.shape} and image {image.shape[:2]} differ in size; "
            "upsample the attention with upsample_attention(maps, image.shape[:2]) first."
        )
    colour = colorize(heat, cmap).astype(np.float32)
    out = (1.0 - alpha) * image[..., :3] + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_groups(image: np.ndarray, attention: np.ndarray, alpha: float = 0.5,
                   cmap: str = "jet") -> np.ndarray:
    """One blended panel per group for one image.

    Args:
        image: (H, W, 3) pixels in [0, 255], the crop the model saw.
        attention: (K, h, w) attention maps of that image.

    Returns:
        uint8 (K, H, W, 3) panels.
    """
    attention = np.asarray(attention)
    if attention.ndim != 3:
        raise ValueError(f"attention for one image must be (K, h, w); got {attention.shape}.")
    heat = normalize_maps(upsample_attention(attention, np.asarray(image).shape[:2]))
    return np.stack([blend_heatmap(image, h, alpha, cmap) for h in heat])
