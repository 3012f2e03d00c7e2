"""The pixel embedder (``embed_pixels``) as an ONNX model, via tf2onnx.

Only the pixel signature is converted: JPEG/PNG decoding and the variable-size resize belong to
the client (or to the TF SavedModel's ``serving_default``). ONNX inputs/outputs keep the
SavedModel names: input ``images`` float32 [N, H, W, 3] in [0, 255] (NHWC), outputs ``embedding``,
``group_embeddings`` and (attentive heads) ``attention``.

Needs the ``onnx`` extra: ``pip install 'dgml-tf[onnx]'`` (tf2onnx, onnx, onnxruntime).
"""

from __future__ import annotations

import os
import pathlib
from typing import Dict, Union

import keras
import numpy as np
import tensorflow as tf

from dgml_tf.atomic import write_atomically
from dgml_tf.export import output_names as names

DEFAULT_OPSET = 17


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs {module}: pip install 'dgml-tf[onnx]' "
            "(tf2onnx==1.17.0, onnx==1.23.2, onnxruntime==1.32.0)."
        ) from error


def _pixel_function(source: Union[str, os.PathLike, keras.Model]):
    """``(tf.function, input_signature)`` computing the pixel endpoint of ``source``."""
    if isinstance(source, keras.Model):
        from dgml_tf.export.signatures import inspect_embedder

        shape = tuple(source.inputs[0].shape)
        if shape[1] is None or shape[2] is None:
            raise ValueError(
                "The model has no fixed input size; export it with export_for_serving first and "
                "convert that SavedModel (its embed_pixels signature has a fixed size)."
            )
        spec = inspect_embedder(source, shape[1:3])
        signature = [tf.TensorSpec((None, *shape[1:3], 3), tf.float32, name=names.PIXELS_INPUT)]

        def embed(images):
            outputs = source(images, training=False)
            if not isinstance(outputs, dict):
                outputs = {names.EMBEDDING: outputs}
            return {n: tf.identity(outputs[n]) for n in spec.output_names}

        return tf.function(embed, input_signature=signature), signature
    path = os.fspath(source)
    loaded = tf.saved_model.load(path)
    if names.PIXELS_SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"SavedModel {path!r} has no {names.PIXELS_SIGNATURE!r} signature (it has "
            f"{sorted(loaded.signatures)}); export it with dgml_tf.export.export_for_serving."
        )
    concrete = loaded.signatures[names.PIXELS_SIGNATURE]
    input_spec = concrete.structured_input_signature[1][names.PIXELS_INPUT]
    signature = [tf.TensorSpec(input_spec.shape, tf.float32, name=names.PIXELS_INPUT)]

    def embed(images):
        return concrete(**{names.PIXELS_INPUT: images})

    # Keep the loaded object alive as long as the function (its variables live there).
    embed.loaded = loaded
    return tf.function(embed, input_signature=signature), signature


def export_onnx(
    source: Union[str, os.PathLike, keras.Model],
    path: Union[str, os.PathLike],
    opset: int = DEFAULT_OPSET,
) -> pathlib.Path:
    """Converts the pixel embedder to ONNX and checks the result with ``onnx.checker``.

    Args:
        source: an exported SavedModel version directory (uses its ``embed_pixels`` signature)
            or a keras.Model with a fixed input size.
        path: the ``.onnx`` file to write (parent directories are created).
        opset: ONNX opset.

    Returns:
        The path written.

    Example:
        >>> export_onnx("exports/dgml/1", "exports/dgml-1.onnx")  # doctest: +SKIP
    """
    tf2onnx = _require("tf2onnx")
    onnx = _require("onnx")
    path = pathlib.Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output path must end in .onnx, got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    function, signature = _pixel_function(source)
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=signature, opset=opset
    )
    onnx.checker.check_model(model_proto)
    write_atomically(os.fspath(path), lambda tmp: onnx.save(model_proto, tmp), suffix=".onnx")
    return path


def run_onnx(path: Union[str, os.PathLike], images: np.ndarray, session=None) -> Dict[str, np.ndarray]:
    """Runs an exported ONNX embedder on float32 (N, H, W, 3) images with onnxruntime.

    Args:
        path: the ``.onnx`` file (ignored when ``session`` is given).
        images: preprocessed RGB images in [0, 255].
        session: an existing ``onnxruntime.InferenceSession`` to reuse.

    Returns:
        ``{output name: array}``.
    """
    if session is None:
        ort = _require("onnxruntime")
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    values = session.run(output_names, {names.PIXELS_INPUT: np.asarray(images, np.float32)})
    return dict(zip(output_names, values, strict=True))
