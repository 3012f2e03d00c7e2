"""What a run shows in TensorBoard besides scalars: attention images and the projector."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def fixed_validation_images(splits, config: Mapping[str, Any], count: int):
    """The first image of ``count`` different validation (else test) classes, evaluation crop.

    Returns:
        ``(n, image_size, image_size, 3)`` float images with ``n <= count``, or None when the
        splits hold no images.
    """
    import numpy as np

    import pipelines

    records = splits.val or splits.test or splits.query
    chosen, seen = [], set()
    for record in records:
        if record.label not in seen:
            seen.add(record.label)
            chosen.append(record)
        if len(chosen) == count:
            break
    if not chosen:
        return None
    dataset = pipelines.make_eval_dataset(chosen, splits.arrays, image_size=config["image_size"],
                                          resize_size=config["resize_size"],
                                          batch_size=len(chosen))
    return np.concatenate([np.asarray(images) for images, _ in dataset])


def write_final_projector(embedding_model, splits, config: Mapping[str, Any], logdir: str,
                          max_points: int) -> Optional[str]:
    """Embeds up to ``max_points`` test images and writes the TensorBoard projector.

    Returns:
        What :func:`dgml_tf.callbacks.write_projector` returns, or None when nothing is written.
    """
    import numpy as np

    import pipelines
    from dgml_tf.callbacks import write_projector

    records = (splits.test or splits.gallery)[:max_points]
    if not records or max_points <= 0:
        return None
    dataset = pipelines.make_eval_dataset(records, splits.arrays, image_size=config["image_size"],
                                          resize_size=config["resize_size"],
                                          batch_size=config["eval_batch_size"])
    embeddings, labels, thumbnails = [], [], []
    small = config["image_size"] <= 64
    for images, batch_labels in dataset:
        embeddings.append(np.asarray(embedding_model(images, training=False)["embedding"]))
        labels.append(np.asarray(batch_labels))
        if small:
            thumbnails.append(np.clip(np.asarray(images), 0, 255).astype(np.uint8))
    return write_projector(logdir, np.concatenate(embeddings), np.concatenate(labels),
                           np.concatenate(thumbnails) if small else None, splits.class_names)
