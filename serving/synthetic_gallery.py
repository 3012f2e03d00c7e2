"""Small synthetic galleries of encoded images with known classes.

Why in the package: the serving tests, ``bench/rest_latency.py`` and a quick local try of the
service all need real encoded images whose classes are known without downloading a dataset.
Each class is a distinct colour layout; its members differ by seeded noise, so every image is
distinct while classes stay recognisable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_image(label: int, member: int, size: int = 32) -> np.ndarray:
    """A uint8 (size, size, 3) RGB image of class ``label``; ``member`` picks the noise."""
    if size < 4:
        raise ValueError(f"size must be at least 4 pixels, got {size}.")
    layout = np.random.default_rng(1000 + int(label))
    # A 4x4 grid of class colours, upsampled: coarse structure a small CNN separates.
    grid = layout.integers(0, 256, size=(4, 4, 3))
    image = np.kron(grid, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    noise = np.random.default_rng(10_000 * int(label) + int(member)).normal(0.0, 12.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def synthetic_gallery(labels: Sequence[int], size: int = 32) -> list[bytes]:
    """PNG images, one per entry of ``labels`` (repeated labels give distinct members)."""
    from dgml_tf.index.gallery import encode_png

    seen: dict[int, int] = {}
    images = []
    for label in labels:
        member = seen.get(int(label), 0)
        seen[int(label)] = member + 1
        images.append(encode_png(class_image(int(label), member, size)))
    return images


def export_tiny_embedder(base_dir, model_name: str, version: int, seed: int = 0,
                         image_size: int = 32, num_groups: int = 3, embedding_dim: int = 48):
    """Exports a small untrained attentive-grouping embedder (small_cnn backbone) for serving
    smoke tests and latency benchmarks; returns the version directory.

    Different ``seed`` values give different weights, hence different fingerprints.
    """
    import keras

    from dgml_tf.export import export_for_serving
    from dgml_tf.models import build_embedding_model

    keras.utils.set_random_seed(seed)
    model = build_embedding_model(backbone="small_cnn", input_shape=(image_size, image_size, 3),
                                  head="attentive", num_groups=num_groups,
                                  embedding_dim=embedding_dim)
    return export_for_serving(model, base_dir, model_name, version=version,
                              image_size=(image_size, image_size), resize_size=image_size)


def index_synthetic_gallery(saved_model_dir, images: Sequence[bytes], labels: Sequence[int], index_dir,
                            backend: str = "scann", expose_paths: bool = True) -> str:
    """Embeds ``images`` with the exported embedder and publishes an index of them.

    :func:`dgml_tf.index.index_gallery` over an in-memory :class:`~dgml_tf.index.GallerySource`.
    Items get ids ``item/<i>`` and paths ``gallery/<i>.png``; those names are synthetic (no file
    of the server), so they are exposed to clients by default. Returns the index version dir.
    """
    from dgml_tf.index import GallerySource, index_gallery

    images = list(images)
    source = GallerySource([f"item/{i}" for i in range(len(images))], np.asarray(labels, np.int64),
                           [f"gallery/{i}.png" for i in range(len(images))], images.__getitem__)
    # One embedding call for the whole gallery, as queries of the same images get.
    return index_gallery(saved_model_dir, source, index_dir, backend=backend,
                         batch_size=max(1, len(images)), progress=False, expose_paths=expose_paths)
