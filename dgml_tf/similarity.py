"""tensorflow-similarity 0.17.1 under Keras 3: the one place that makes it work.

tensorflow-similarity is an optional extra (``pip install dgml-tf[similarity]``); it is imported
lazily. Under Keras 3 (see DEVELOPERS.md, "Known breakages") its losses default to
``reduction="auto"``, which Keras 3 rejects, and their loss functions use Python control flow on
tensors, which fails inside ``model.fit``'s ``tf.function``; ``SimilarityModel.save`` calls the
Keras 2 ``save`` signature. This module supplies:

- :func:`make_tfsim_loss`: a tensorflow-similarity loss that builds and trains under Keras 3;
- :func:`build_similarity_model`: our embedding model wrapped as a ``SimilarityModel``
  (indexing, lookup, ``evaluate_retrieval``);
- :func:`save_similarity_model` / :func:`load_similarity_model`: the model as a ``.keras``
  file plus its index, and back.
"""

from __future__ import annotations

import os
from typing import Optional

import keras

from dgml_tf.losses.tfsim_adapter import (  # noqa: F401  (public here too)
    make_tfsim_loss,
    require_tensorflow_similarity,
)

_MODEL_FILENAME = "model.keras"


def build_similarity_model(
    model, outputs=None, output_key: str = "embedding", name: Optional[str] = None
):
    """Wraps an embedding model as a ``tensorflow_similarity.models.SimilarityModel``.

    Args:
        model: a functional ``keras.Model`` (e.g. from ``dgml_tf.models.build_embedding_model``),
            or its input tensor(s) when ``outputs`` is given.
        outputs: the embedding tensor, when ``model`` is an input tensor.
        output_key: which output of a dict-output model to index ("embedding", the
            concatenated unit groups ``(B, K*d)``).
        name: name of the new model.

    Returns:
        A ``SimilarityModel`` sharing the given model's layers (and weights), with one output.
    """
    tfsim = require_tensorflow_similarity()
    if outputs is None:
        if not isinstance(model, keras.Model):
            raise TypeError(
                "build_similarity_model expects a keras.Model, or inputs together with "
                f"outputs=; got {type(model).__name__} and outputs=None."
            )
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        outputs = model.output
        if isinstance(outputs, dict):
            if output_key not in outputs:
                raise KeyError(
                    f"build_similarity_model: the model has no output {output_key!r}; its "
                    f"outputs are {sorted(outputs)}. Pass output_key=<one of them>."
                )
            outputs = outputs[output_key]
        elif isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(
                    f"build_similarity_model: the model has {len(outputs)} unnamed outputs; "
                    "pass inputs and the embedding tensor as outputs= instead."
                )
            outputs = outputs[0]
    else:
        inputs = model
    if len(outputs.shape) != 2:
        raise ValueError(
            "build_similarity_model: the indexed output must be a (batch, D) embedding; got "
            f"shape {tuple(outputs.shape)}. Use dgml_tf.layers.flatten_groups on group "
            "embeddings."
        )
    return tfsim.models.SimilarityModel(inputs, outputs, name=name)


def save_similarity_model(model, path: str, compression: bool = True) -> None:
    """Saves a ``SimilarityModel`` as ``<path>/model.keras`` plus its index in ``<path>/index``.

    ``SimilarityModel.save`` uses the Keras 2 signature and fails under Keras 3; this writes the
    Keras 3 ``.keras`` archive and the index separately. A model without an index (never
    compiled nor given ``create_index``) is saved without one.
    """
    os.makedirs(path, exist_ok=True)
    # keras.Model.save, not the SimilarityModel override (which passes Keras 2 arguments).
    keras.Model.save(model, os.path.join(path, _MODEL_FILENAME))
    if getattr(model, "_ix", None) is not None:
        model.save_index(path, compression=compression)


def load_similarity_model(path: str, custom_objects: Optional[dict] = None, compile: bool = False):
    """Loads what :func:`save_similarity_model` wrote: the model and, if saved, its index.

    Args:
        path: the directory given to :func:`save_similarity_model`.
        custom_objects: extra objects for ``keras.models.load_model`` (dgml_tf layers and
            losses are registered and need none).
        compile: whether to restore the training configuration.
    """
    tfsim = require_tensorflow_similarity()
    model_file = os.path.join(path, _MODEL_FILENAME)
    if not os.path.exists(model_file):
        raise FileNotFoundError(
            f"load_similarity_model: no {_MODEL_FILENAME} in {path!r}; save with "
            "dgml_tf.similarity.save_similarity_model(model, path)."
        )
    # Importing these registers our layers and losses, so .keras files containing them load.
    import dgml_tf.layers  # noqa: F401
    import dgml_tf.losses

    dgml_tf.losses.register_serializables()

    objects = {"SimilarityModel": tfsim.models.SimilarityModel, **(custom_objects or {})}
    model = keras.models.load_model(model_file, custom_objects=objects, compile=compile)
    if os.path.isdir(os.path.join(path, "index")):
        model.load_index(path)
    return model
