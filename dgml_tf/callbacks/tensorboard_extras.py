"""TensorBoard additions to ``keras.callbacks.TensorBoard``: per-group learning rates,
attention-map images of fixed validation images, and the embedding projector.

Keras' own callback already writes every epoch log (losses, ``val_*`` metrics). These write into
the same ``<output_dir>/tensorboard`` tree, under ``train/`` (scalars, images) and
``projector/``.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import keras
import numpy as np


def _summary_writer(logdir: str):
    import tensorflow as tf

    return tf.summary.create_file_writer(logdir)


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate of each parameter group at the end of every epoch.

    Args:
        logdir: TensorBoard run directory (e.g. ``<output_dir>/tensorboard/train``).
        learning_rates: ``() -> {group name: current learning rate}``; injected because the
            grouped optimizer decides how rates are stored.

    Example:
        >>> LearningRateLogger("out/tensorboard/train", lambda: {"backbone": 1e-5})
    """

    def __init__(self, logdir: str, learning_rates: Callable[[], Dict[str, float]]):
        super().__init__()
        self.logdir = logdir
        self.learning_rates = learning_rates
        self._writer = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = _summary_writer(self.logdir)
        rates = self.learning_rates()
        with self._writer.as_default():
            for group, rate in rates.items():
                tf.summary.scalar(f"learning_rate/{group}", float(rate), step=epoch)
        self._writer.flush()
        if logs is not None:
            logs.update({f"lr_{group}": float(rate) for group, rate in rates.items()})


def attention_panels(embedding_model: keras.Model, images: np.ndarray) -> Optional[np.ndarray]:
    """Blended attention panels (B, K, H, W, 3) uint8 for images (B, H, W, C) in [0, 255].

    Returns None for models without an "attention" output (baseline heads).
    """
    from dgml_tf.explain import overlay_groups

    outputs = embedding_model(images, training=False)
    if "attention" not in outputs:
        return None
    attention = keras.ops.convert_to_numpy(outputs["attention"])
    rgb = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
    return np.stack([overlay_groups(image, maps) for image, maps in zip(rgb, attention)])


class AttentionImages(keras.callbacks.Callback):
    """Writes each group's attention over fixed validation images (upsampled, blended).

    One ``tf.summary.image`` per group ("attention/group_k"), each holding the fixed images, so
    TensorBoard's step slider shows how a group's focus changes during training.

    Args:
        logdir: TensorBoard run directory.
        embedding_model: model with an "attention" output (B, K, h, w).
        images: (B, H, W, C) float pixels in [0, 255], the same every epoch.
        every: write every N epochs (and at epoch 0 of the run).
    """

    def __init__(self, logdir: str, embedding_model: keras.Model, images: np.ndarray,
                 every: int = 1):
        super().__init__()
        self.logdir = logdir
        self.embedding_model = embedding_model
        self.images = np.asarray(images, dtype=np.float32)
        self.every = max(1, int(every))
        self._writer = None

    def write(self, step: int) -> bool:
        """Writes the panels at ``step``; False if the model has no attention output."""
        import tensorflow as tf

        panels = attention_panels(self.embedding_model, self.images)
        if panels is None:
            return False
        if self._writer is None:
            self._writer = _summary_writer(self.logdir)
        with self._writer.as_default():
            for group in range(panels.shape[1]):
                tf.summary.image(f"attention/group_{group}", panels[:, group], step=step,
                                 max_outputs=len(panels))
        self._writer.flush()
        return True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.every == 0:
            self.write(epoch)


def make_sprite(images: np.ndarray) -> np.ndarray:
    """Tiles (N, H, W, C) uint8 images row-major into one square-grid RGB image."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w = images.shape[:3]
    side = int(np.ceil(np.sqrt(n)))
    sprite = np.zeros((side * h, side * w, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, side)
        sprite[row * h:(row + 1) * h, col * w:(col + 1) * w] = image[..., :3]
    return sprite


def write_projector(logdir: str, embeddings: np.ndarray, labels: np.ndarray,
                    images: Optional[np.ndarray] = None, class_names: Optional[dict] = None,
                    max_sprite_side: int = 8192) -> str:
    """Writes embeddings for TensorBoard's projector: checkpoint, metadata.tsv, optional sprite.

    Args:
        logdir: directory for the projector files (e.g. ``<output_dir>/tensorboard/projector``).
        embeddings: (N, D) float.
        labels: (N,) integer classes, written to metadata.tsv (with class names when given).
        images: optional (N, H, W, C) uint8 thumbnails; a sprite is written when the tiled image
            fits in ``max_sprite_side`` pixels (TensorBoard's limit is 8192).
        class_names: optional label -> name.

    Returns:
        The projector config path.
    """
    import tensorflow as tf
    from PIL import Image
    from tensorboard.plugins import projector

    os.makedirs(logdir, exist_ok=True)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels.")
    with open(os.path.join(logdir, "metadata.tsv"), "w", encoding="utf-8") as handle:
        handle.write("label\tname\n")
        for label in labels:
            name = (class_names or {}).get(int(label), str(int(label)))
            handle.write(f"{int(label)}\t{name}\n")
    variable = tf.Variable(embeddings, name="embedding")
    checkpoint = tf.train.Checkpoint(embedding=variable)
    checkpoint.save(os.path.join(logdir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    if images is not None and len(images) == len(embeddings):
        h, w = np.asarray(images).shape[1:3]
        side = int(np.ceil(np.sqrt(len(images))))
        if side * max(h, w) <= max_sprite_side:
            Image.fromarray(make_sprite(images)).save(os.path.join(logdir, "sprite.png"))
            entry.sprite.image_path = "sprite.png"
            entry.sprite.single_image_dim.extend([int(w), int(h)])
    projector.visualize_embeddings(logdir, config)
    return os.path.join(logdir, "projector_config.pbtxt")
