"""PNG figures of attention maps: a grid for several images, and a retrieval panel."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from dgml_tf.explain.attention_overlay import overlay_groups


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Figures need matplotlib: pip install 'dgml-tf[explain]'.") from err
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(fig, path: str) -> str:
    from dgml_tf.atomic import write_atomically

    # A reader never sees a half-written PNG.
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    return path


def group_attention_grid(images: np.ndarray, attention: np.ndarray, path: str,
                         row_titles: Optional[Sequence[str]] = None, alpha: float = 0.5,
                         cmap: str = "jet") -> str:
    """Saves a grid: one row per image, the image then one blended panel per group.

    Args:
        images: (N, H, W, 3) crops the model saw, pixels in [0, 255].
        attention: (N, K, h, w) attention maps of those images.
        path: PNG file to write.
        row_titles: optional label per row.

    Returns:
        The path written.
    """
    images = np.asarray(images)
    attention = np.asarray(attention)
    if images.shape[0] != attention.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {attention.shape[0]} attention maps.")
    titles = list(row_titles) if row_titles else ["image"] * len(images)
    return _panel_rows(images, attention, titles, ["black"] * len(images), path, alpha, cmap)


def retrieval_figure(query_image: np.ndarray, query_attention: np.ndarray,
                     neighbour_images: np.ndarray, neighbour_attention: np.ndarray,
                     path: str, query_label: Optional[int] = None,
                     neighbour_labels: Optional[Sequence[int]] = None,
                     scores: Optional[Sequence[float]] = None, alpha: float = 0.5,
                     cmap: str = "jet") -> str:
    """Saves the query and its top-k neighbours, each with its per-group attention maps.

    One row per image (query first); a neighbour's title shows its rank, label and score, and is
    green when its label matches the query's, red otherwise.
    """
    images = np.concatenate([np.asarray(query_image)[None], np.asarray(neighbour_images)])
    attention = np.concatenate([np.asarray(query_attention)[None], np.asarray(neighbour_attention)])
    titles = ["query" + (f" (label {query_label})" if query_label is not None else "")]
    for rank in range(len(neighbour_images)):
        title = f"#{rank + 1}"
        if neighbour_labels is not None:
            title += f" label {neighbour_labels[rank]}"
        if scores is not None:
            title += f" {scores[rank]:.3f}"
        titles.append(title)
    colours = ["black"]
    for rank in range(len(neighbour_images)):
        same = None if query_label is None or neighbour_labels is None else (
            neighbour_labels[rank] == query_label)
        colours.append("black" if same is None else ("green" if same else "red"))
    return _panel_rows(images, attention, titles, colours, path, alpha, cmap)


def _panel_rows(images, attention, titles, colours, path, alpha, cmap) -> str:
    """One row per image: the image (titled, coloured) then one blended panel per group."""
    n, k = attention.shape[:2]
    plt = _pyplot()
    fig, axes = plt.subplots(n, k + 1, figsize=(1.8 * (k + 1), 1.8 * n), squeeze=False)
    for row in range(n):
        image = _as_uint8_rgb(images[row])
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(titles[row], fontsize=8, color=colours[row])
        for g, panel in enumerate(overlay_groups(image, attention[row], alpha, cmap)):
            axes[row, g + 1].imshow(panel)
            if row == 0:
                axes[row, g + 1].set_title(f"group {g}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
