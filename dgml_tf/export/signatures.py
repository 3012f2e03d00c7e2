"""The two endpoints of an exported embedder, assembled with ``keras.export.ExportArchive``.

``ExportArchive`` (Keras 3) tracks the model's variables and writes a SavedModel whose endpoints
are plain ``tf.function`` s with explicit input signatures, so the signature names, input names
and output names are exactly the ones in :mod:`dgml_tf.export.output_names`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import tensorflow as tf

from dgml_tf.export import output_names as names
from dgml_tf.export.preprocessing import decode_and_preprocess_batch
from pipelines.image_limits import DEFAULT_MAX_IMAGE_PIXELS


@dataclasses.dataclass(frozen=True)
class EmbedderSpec:
    """What an exported embedder computes, read from the model once.

    Attributes:
        image_size: (height, width) of the crop the model takes.
        channels: input channels (3).
        output_names: the model outputs that are exported, in ``EMBEDDER_OUTPUTS`` order.
        embedding_dim: D.
        num_groups: K (1 for a single-embedding head without group output).
        group_dim: d.
        attention_size: (h, w) of the attention maps, or None without attention.
    """

    image_size: tuple
    channels: int
    output_names: tuple
    embedding_dim: int
    num_groups: int
    group_dim: int
    attention_size: "tuple | None"


def _model_outputs(model: keras.Model, images: tf.Tensor) -> dict:
    outputs = model(images, training=False)
    if not isinstance(outputs, dict):
        # A plain embedding model: export it under the documented name.
        outputs = {names.EMBEDDING: outputs}
    return outputs


def inspect_embedder(model: keras.Model, image_size: Sequence[int], channels: int = 3) -> EmbedderSpec:
    """Checks ``model`` against the embedder contract and reads its dimensions.

    The contract (DEVELOPERS.md): float32 RGB [0, 255] input (B, H, W, 3); output a dict with
    ``embedding`` (B, D), ``group_embeddings`` (B, K, d) and, for attentive heads, ``attention``
    (B, K, h, w). A model returning a single tensor is treated as ``{"embedding": tensor}``.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    input_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if input_shape is not None:
        if len(input_shape) != 4 or input_shape[-1] not in (None, channels):
            raise ValueError(
                f"The model takes inputs of shape {input_shape}; an embedder must take images "
                f"(batch, height, width, {channels})."
            )
        for expected, got in zip(image_size, input_shape[1:3], strict=False):
            if got is not None and got != expected:
                raise ValueError(
                    f"The model was built for {input_shape[1:3]} images but image_size="
                    f"{image_size} was requested; pass --image_size={input_shape[1]} (the export "
                    "crops to the model's input size)."
                )
    probe = tf.zeros((1, *image_size, channels), tf.float32)
    outputs = _model_outputs(model, probe)
    if names.EMBEDDING not in outputs:
        raise ValueError(
            f"The model's outputs {sorted(outputs)} have no {names.EMBEDDING!r}; an embedder "
            "must return a dict with 'embedding' (and 'group_embeddings', 'attention') as built "
            "by dgml_tf.models.build_embedding_model."
        )
    exported = tuple(n for n in names.EMBEDDER_OUTPUTS if n in outputs)
    embedding_dim = int(outputs[names.EMBEDDING].shape[-1])
    if names.GROUP_EMBEDDINGS in outputs:
        num_groups, group_dim = (int(s) for s in outputs[names.GROUP_EMBEDDINGS].shape[1:3])
    else:
        num_groups, group_dim = 1, embedding_dim
    if num_groups * group_dim != embedding_dim:
        raise ValueError(
            f"group_embeddings is {num_groups} x {group_dim} but embedding has {embedding_dim} "
            "dims; the embedding must be the concatenation of the groups."
        )
    attention_size = None
    if names.ATTENTION in outputs:
        attention_size = tuple(int(s) for s in outputs[names.ATTENTION].shape[2:4])
    return EmbedderSpec(
        image_size=image_size,
        channels=channels,
        output_names=exported,
        embedding_dim=embedding_dim,
        num_groups=num_groups,
        group_dim=group_dim,
        attention_size=attention_size,
    )


def build_export_archive(
    model: keras.Model, spec: EmbedderSpec, resize_size: int,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> keras.export.ExportArchive:
    """An ``ExportArchive`` with the ``serving_default`` (bytes) and ``embed_pixels`` endpoints.

    Args:
        model: the Keras embedder.
        spec: from :func:`inspect_embedder`.
        resize_size: shorter side before the centre crop, in the bytes endpoint.
        max_image_pixels: the bytes endpoint refuses (``INVALID_ARGUMENT``, from the header,
            before decoding) images of another format than JPEG/PNG/GIF/BMP/WebP or with more
            pixels to decode than this, so TF Serving running the export cannot be made to OOM.

    Returns:
        The archive; call ``write_out(path)``.
    """
    height, width = spec.image_size
    exported = spec.output_names

    def embed(images: tf.Tensor) -> dict:
        outputs = _model_outputs(model, images)
        # tf.identity gives each output a clean, stable tensor name in the SignatureDef.
        return {name: tf.identity(outputs[name], name=name) for name in exported}

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, height, width, spec.channels), tf.float32, name=names.PIXELS_INPUT)
        ]
    )
    def embed_pixels(images):
        return embed(images)

    @tf.function(
        input_signature=[tf.TensorSpec((None,), tf.string, name=names.IMAGE_BYTES_INPUT)]
    )
    def serving_default(image_bytes):
        images = decode_and_preprocess_batch(
            image_bytes, spec.image_size, resize_size, channels=spec.channels,
            max_pixels=max_image_pixels,
        )
        return embed(images)

    archive.add_endpoint(names.SERVING_SIGNATURE, serving_default)
    archive.add_endpoint(names.PIXELS_SIGNATURE, embed_pixels)
    return archive
