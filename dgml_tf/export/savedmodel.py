"""SavedModel export of an embedder: one TF Serving version ``<base_dir>/<model_name>/<version>/``.

Library::

    from dgml_tf.export import export_for_serving, model_fingerprint
    version_dir = export_for_serving(model, "exports", "dgml", image_size=(224, 224))
    model_fingerprint(version_dir)         # identity of this exact version
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import keras
import numpy as np

from dgml_tf.export import output_names as names
from dgml_tf.export.fingerprint import model_fingerprint
from dgml_tf.export.metadata import write_export_metadata
from dgml_tf.export.model_source import load_embedder
from dgml_tf.export.preprocessing import check_sizes
from dgml_tf.export.signatures import build_export_archive, inspect_embedder
from dgml_tf.export.tf_serving_layout import check_model_name, resolve_version, staged_version_dir
from pipelines.image_limits import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["ExportResult", "as_pair", "export_and_write_configs", "export_for_serving"]

LOG = logging.getLogger(__name__)


def _outputs_match(reference: keras.Model, folded: keras.Model, spec) -> bool:
    """Whether ``folded`` gives ``reference``'s inference outputs on a probe batch."""
    probe = np.random.default_rng(0).uniform(
        0.0, 255.0, (2, *spec.image_size, spec.channels)).astype("float32")
    expected = keras.tree.flatten(reference(probe, training=False))
    actual = keras.tree.flatten(folded(probe, training=False))
    # float32 folds agree to ~1e-6; a 16-bit compute dtype rounds the folded kernel once.
    tolerance = 1e-3 if reference.compute_dtype == "float32" else 5e-2
    return len(expected) == len(actual) and all(
        np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(e),
                    rtol=tolerance, atol=tolerance * (1.0 + float(np.max(np.abs(e)))))
        for e, a in zip(expected, actual))


def _inference_model(model: keras.Model, spec) -> tuple:
    """``(served model, folded pairs)``: ``model`` with its BatchNorms folded into the
    convolutions before them (:func:`dgml_tf.models.fold_batch_norm_for_inference`), checked
    against ``model`` on a probe batch; ``(model, 0)`` when nothing folds or the model cannot be
    cloned (subclassed models)."""
    from dgml_tf.models.conv_frozen_batch_norm import (FoldedBatchNormalization,
                                                       fold_batch_norm_for_inference)
    from dgml_tf.models.layer_walk import flat_layers

    try:
        folded = fold_batch_norm_for_inference(model)
    except (ValueError, TypeError) as error:  # clone_model: functional/sequential models only
        LOG.info("export: BatchNorms not folded (%s)", error)
        return model, 0
    if folded is model:
        return model, 0
    if not _outputs_match(model, folded, spec):
        LOG.warning("export: the BatchNorm-folded model's outputs differ from the model's on a "
                    "probe batch; exporting the model unfolded.")
        return model, 0
    return folded, sum(isinstance(layer, FoldedBatchNormalization) for layer in flat_layers(folded))


def as_pair(size: Union[int, Sequence[int]]) -> tuple:
    """``(h, w)`` from one int, ``[h]`` or ``[h, w]``: ``as_pair(32) == (32, 32)``."""
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return size * 2 if len(size) == 1 else size


def export_for_serving(
    model: Union[keras.Model, str, os.PathLike],
    base_dir: Union[str, os.PathLike],
    model_name: str,
    version: Optional[int] = None,
    image_size: Union[int, Sequence[int]] = (224, 224),
    resize_size: Optional[int] = 256,
    channels: int = 3,
    metadata: Optional[Mapping[str, Any]] = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    fold_batch_norm: bool = True,
) -> pathlib.Path:
    """Writes one TF Serving version ``<base_dir>/<model_name>/<version>/`` of an embedder.

    The SavedModel has two signatures (names are a stable contract):

    - ``serving_default``: input ``image_bytes`` (string [-1], encoded JPEG/PNG/GIF/BMP, grayscale
      or RGBA are converted to RGB), decoded and preprocessed in-graph like the evaluation
      pipeline: shorter side resized to ``resize_size`` (bilinear, antialiased), centre crop
      ``image_size``.
    - ``embed_pixels``: input ``images`` (float32 [-1, H, W, 3], RGB in [0, 255], preprocessed).

    Both return ``embedding`` [-1, D], ``group_embeddings`` [-1, K, d] and, for attentive heads,
    ``attention`` [-1, K, h, w].

    The version is staged in a hidden directory and renamed into place, so TF Serving never
    loads a partial export; an existing version is never overwritten.

    Args:
        model: a keras.Model, a ``.keras`` file, or a training run directory holding
            ``best.keras`` / ``model.keras``.
        base_dir: TF Serving's model base directory (mounted at ``/models`` in the container).
        model_name: the served model name, e.g. ``"dgml"``.
        version: a new positive integer; None takes the latest existing version + 1 (1 if none).
        image_size: crop size (height, width) or one int; must match a fixed model input size.
        resize_size: shorter side before the crop; None keeps the protocol's 256/224 ratio
            (e.g. 37 for 32-px crops).
        channels: image channels (3).
        metadata: extra JSON-serialisable entries for ``dgml_export.json``.
        max_image_pixels: ``serving_default`` checks each image's header before decoding it and
            answers ``INVALID_ARGUMENT`` for more pixels than this (all frames of a GIF
            counted), zero-sized images, animated WebP and unknown formats. Recorded in
            ``dgml_export.json``. Default 4096 x 4096.
        fold_batch_norm: serve the model with each BatchNorm that follows a linear ``Conv2D``
            folded into that convolution's kernel and bias (the same inference function,
            checked on a probe batch; 1.02-1.15x the images/s for ``small_cnn`` on one
            thread, ``bench/embedder_throughput.py``). The SavedModel then holds the folded
            weights; the number of folded BatchNorms is recorded in ``dgml_export.json``
            (``batch_norm_folded``).

    Returns:
        The version directory.

    Raises:
        VersionExistsError: ``version`` already exists.
        ValueError: bad sizes, name, or a model that does not follow the embedder contract.

    Example:
        >>> path = export_for_serving("runs/fmnist/best.keras", "exports", "dgml",
        ...                           image_size=32, resize_size=None)  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        '1'
    """
    check_model_name(model_name)
    image_size, resize_size = check_sizes(as_pair(image_size), resize_size)
    if channels != 3:
        raise ValueError(f"channels must be 3 (models take RGB images), got {channels}.")
    keras_model, source = load_embedder(model)
    spec = inspect_embedder(keras_model, image_size, channels)
    model_dir = pathlib.Path(base_dir) / model_name
    version = resolve_version(model_dir, version)
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}.")
    served, folded = _inference_model(keras_model, spec) if fold_batch_norm else (keras_model, 0)
    archive = build_export_archive(served, spec, resize_size, max_image_pixels=max_image_pixels)
    with staged_version_dir(model_dir, version) as staging:
        archive.write_out(os.fspath(staging), verbose=False)
        write_export_metadata(
            staging,
            {
                "model_name": model_name,
                "version": version,
                "image_size": list(spec.image_size),
                "resize_size": resize_size,
                "max_image_pixels": max_image_pixels,
                "channels": channels,
                "embedding_dim": spec.embedding_dim,
                "num_groups": spec.num_groups,
                "group_dim": spec.group_dim,
                "attention_size": list(spec.attention_size) if spec.attention_size else None,
                "signatures": {
                    names.SERVING_SIGNATURE: {"inputs": {names.IMAGE_BYTES_INPUT: "string[-1]"}},
                    names.PIXELS_SIGNATURE: {
                        "inputs": {names.PIXELS_INPUT: f"float32[-1,{image_size[0]},{image_size[1]},3]"}
                    },
                },
                "output_names": list(spec.output_names),
                "preprocessing": "pipelines.decoding.decode_rgb + pipelines.transforms.eval_transform: shorter side "
                "resized (bilinear, antialias), centre crop; RGB in [0, 255]",
                "source": source,
                "batch_norm_folded": folded,
                "model_fingerprint": model_fingerprint(staging),
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **dict(metadata or {}),
            },
        )
    return model_dir / str(version)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_and_write_configs` wrote.

    Attributes:
        version_dir: the new SavedModel version directory.
        fingerprint: its :func:`model_fingerprint`.
        onnx_path: the ONNX file, or None when not asked for.
        configs: ``{file name: path}`` of ``models.config`` and the other server configs.
    """

    version_dir: pathlib.Path
    fingerprint: str
    onnx_path: Optional[pathlib.Path]
    configs: Dict[str, str]


def export_and_write_configs(
    model: Union[keras.Model, str, os.PathLike],
    base_dir: Union[str, os.PathLike],
    model_name: str,
    labels: Optional[Mapping[str, int]] = None,
    onnx: bool = False,
    **export_options,
) -> ExportResult:
    """:func:`export_for_serving`, then (optionally) ONNX and the TF Serving configs of ``base_dir``.

    Args:
        model, base_dir, model_name: as for :func:`export_for_serving`.
        labels: version labels of ``model_name`` for ``models.config``, e.g. ``{"stable": 3}``.
        onnx: also write ``<base_dir>/<model_name>-<version>.onnx``.
        **export_options: ``version``, ``image_size``, ``resize_size``, ``max_image_pixels``...
            of :func:`export_for_serving`.

    Returns:
        The paths written.

    Example:
        >>> result = export_and_write_configs("runs/fm", "exports", "dgml", onnx=True)  # doctest: +SKIP
        >>> result.configs["models.config"]  # doctest: +SKIP
        'exports/models.config'
    """
    from dgml_tf.export.onnx_export import export_onnx
    from dgml_tf.export.serving_configs import write_serving_configs

    path = export_for_serving(model, base_dir, model_name, **export_options)
    fingerprint = model_fingerprint(path)
    onnx_path = None
    if onnx:
        onnx_path = export_onnx(path, pathlib.Path(base_dir) / f"{model_name}-{path.name}.onnx")
    written = write_serving_configs(base_dir, {model_name: dict(labels)} if labels else None)
    return ExportResult(path, fingerprint, onnx_path, written)
