"""Embedding a finite dataset with a model: one traced inference function per model.

Evaluation (:func:`dgml_tf.evaluate.embed_records`: the evaluate CLI, the train CLI's validation
and test) and the explain report embed through here, with the same compiled forward pass.

Example:
    >>> dataset = pipelines.make_eval_dataset(records, arrays, 224, 256, 64)  # doctest: +SKIP
    >>> out = embed_dataset(model, dataset)  # doctest: +SKIP
    >>> out["embedding"].shape, out["labels"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from typing import Dict

import keras
import numpy as np

_FORWARD = weakref.WeakKeyDictionary()


def _compiled_forward(model: keras.Model):
    """One traced inference function per model, reused across evaluations."""
    import tensorflow as tf

    if model not in _FORWARD:
        _FORWARD[model] = tf.function(lambda images: model(images, training=False),
                                      reduce_retracing=True)
    return _FORWARD[model]


def embed_dataset(model: keras.Model, dataset, keys=("embedding", "group_embeddings")
                  ) -> Dict[str, np.ndarray]:
    """Runs ``model`` over a finite dataset of ``(images, labels)`` batches.

    Args:
        model: an embedding model with dict outputs (``dgml_tf.models.build_embedding_model``).
        dataset: finite iterable of ``(images, labels)`` batches (tf.data or NumPy).
        keys: which model outputs to collect (those missing from the outputs are skipped).

    Returns:
        ``{key: (N, ...) array for each collected output, "labels": (N,) int64}``.
    """
    forward = _compiled_forward(model)
    collected: Dict[str, list] = {}
    labels = []
    for images, batch_labels in dataset:
        outputs = forward(images)
        for key in keys:
            if key in outputs:
                collected.setdefault(key, []).append(keras.ops.convert_to_numpy(outputs[key]))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not labels:
        raise ValueError("The evaluation dataset is empty; check the split and --val_classes.")
    result = {key: np.concatenate(parts) for key, parts in collected.items()}
    result["labels"] = np.concatenate(labels).astype(np.int64)
    return result
