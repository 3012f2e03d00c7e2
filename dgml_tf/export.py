"""Export an embedder for serving: TF Serving SavedModel versions, their configs, and ONNX.

Library::

    from dgml_tf.export import export_for_serving, model_fingerprint, export_onnx
    version_dir = export_for_serving(model, "exports", "dgml", image_size=(224, 224))
    model_fingerprint(version_dir)         # identity of this exact version

CLI::

    python -m dgml_tf.export --run_dir=runs/cub --base_dir=exports --model_name=dgml \\
        --image_size=224 --resize_size=256 --labels=stable=1 --onnx

writes ``exports/dgml/<next version>/`` (a SavedModel with signatures ``serving_default`` on
``image_bytes`` and ``embed_pixels`` on ``images``; see :mod:`dgml_tf.exporting.output_names`),
``exports/dgml/<version>/assets/dgml_export.json``, ``exports/dgml-<version>.onnx`` with
``--onnx``, and ``exports/models.config``, ``batching_parameters.txt``, ``monitoring.config``
for ``serving/docker-compose.yml``.
"""

from __future__ import annotations

import datetime
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import keras

from dgml_tf.exporting import output_names as names
from dgml_tf.exporting.fingerprint import model_fingerprint
from dgml_tf.exporting.metadata import read_export_metadata, write_export_metadata
from dgml_tf.exporting.model_source import load_embedder
from dgml_tf.exporting.onnx_export import export_onnx, run_onnx
from dgml_tf.exporting.preprocessing import check_sizes
from pipelines.decoding import DEFAULT_MAX_IMAGE_PIXELS
from dgml_tf.exporting.serving_configs import parse_labels, write_serving_configs
from dgml_tf.exporting.signatures import build_export_archive, inspect_embedder
from dgml_tf.exporting.tf_serving_layout import (
    VersionExistsError,
    check_model_name,
    resolve_version,
    staged_version_dir,
)

__all__ = [
    "export_for_serving",
    "model_fingerprint",
    "export_onnx",
    "run_onnx",
    "read_export_metadata",
    "write_serving_configs",
    "VersionExistsError",
    "run",
]


def _as_pair(size: Union[int, Sequence[int]]) -> tuple:
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
    image_size, resize_size = check_sizes(_as_pair(image_size), resize_size)
    if channels != 3:
        raise ValueError(f"channels must be 3 (models take RGB images), got {channels}.")
    keras_model, source = load_embedder(model)
    spec = inspect_embedder(keras_model, image_size, channels)
    model_dir = pathlib.Path(base_dir) / model_name
    version = resolve_version(model_dir, version)
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}.")
    archive = build_export_archive(keras_model, spec, resize_size, max_image_pixels=max_image_pixels)
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
                "model_fingerprint": model_fingerprint(staging),
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **dict(metadata or {}),
            },
        )
    return model_dir / str(version)


def _define_flags(flag_values) -> None:
    """Defines this CLI's flags in ``flag_values`` (its own FlagValues: no clash with other CLIs)."""
    import functools

    from absl import flags

    define_boolean = functools.partial(flags.DEFINE_boolean, flag_values=flag_values)
    define_integer = functools.partial(flags.DEFINE_integer, flag_values=flag_values)
    define_list = functools.partial(flags.DEFINE_list, flag_values=flag_values)
    define_string = functools.partial(flags.DEFINE_string, flag_values=flag_values)
    define_string("keras_model", None, "A .keras model file to export.")
    define_string("run_dir", None, "A dgml_tf.train run directory (best.keras or model.keras).")
    define_string("base_dir", None, "TF Serving model base directory (mounted at /models).")
    define_string("model_name", "dgml", "Served model name (<base_dir>/<model_name>/<version>).")
    define_integer("version", None, "Version to write; default: latest + 1. Never overwrites.")
    define_list("image_size", ["224"], "Crop size: H or H,W (must match a fixed model input).")
    define_integer("resize_size", None, "Shorter side before the crop; default round(1.143*H), "
                         "i.e. 256 for 224.")
    define_boolean("onnx", False, "Also write <base_dir>/<model_name>-<version>.onnx.")
    define_integer("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "serving_default refuses images "
                   "with more pixels than this (read from the header, before decoding; all GIF "
                   "frames counted) with INVALID_ARGUMENT. Default 4096*4096.")
    define_list("labels", [], "Version labels for models.config, e.g. stable=3,canary=4.")


def main(argv: Sequence[str], FLAGS) -> int:  # noqa: N803 (absl's naming)
    """Runs the CLI with parsed ``FLAGS``; ``argv`` are the non-flag arguments."""
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    if bool(FLAGS.keras_model) == bool(FLAGS.run_dir):
        raise SystemExit("Pass exactly one of --keras_model=<file.keras> or --run_dir=<run dir>.")
    if not FLAGS.base_dir:
        raise SystemExit("--base_dir is required (TF Serving's model base directory).")
    labels = parse_labels(FLAGS.labels)
    path = export_for_serving(
        FLAGS.keras_model or FLAGS.run_dir,
        FLAGS.base_dir,
        FLAGS.model_name,
        version=FLAGS.version,
        image_size=_as_pair([int(s) for s in FLAGS.image_size]),
        resize_size=FLAGS.resize_size,
        max_image_pixels=FLAGS.max_image_pixels,
    )
    print(f"SavedModel: {path}  fingerprint {model_fingerprint(path)}")
    if FLAGS.onnx:
        onnx_path = export_onnx(path, pathlib.Path(FLAGS.base_dir) / f"{FLAGS.model_name}-{path.name}.onnx")
        print(f"ONNX: {onnx_path}")
    written = write_serving_configs(FLAGS.base_dir, {FLAGS.model_name: labels} if labels else None)
    for file_path in written.values():
        print(f"config: {file_path}")
    print("serve: DGML_EXPORT_DIR=" + os.path.abspath(FLAGS.base_dir)
          + " docker compose -f serving/docker-compose.yml up")
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``dgml-export``)."""
    from dgml_tf.cli import run_cli

    run_cli(argv, _define_flags, main, __doc__)


if __name__ == "__main__":
    run()
