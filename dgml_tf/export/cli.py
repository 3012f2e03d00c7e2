"""``python -m dgml_tf.export``: export an embedder for TF Serving (SavedModel, configs, ONNX).

CLI::

    python -m dgml_tf.export --run_dir=runs/cub --base_dir=exports --model_name=dgml \\
        --image_size=224 --resize_size=256 --labels=stable=1 --onnx

writes ``exports/dgml/<next version>/`` (a SavedModel with signatures ``serving_default`` on
``image_bytes`` and ``embed_pixels`` on ``images``; see :mod:`dgml_tf.export.output_names`),
``exports/dgml/<version>/assets/dgml_export.json``, ``exports/dgml-<version>.onnx`` with
``--onnx``, and ``exports/models.config``, ``batching_parameters.txt``, ``monitoring.config``
for ``serving/docker-compose.yml``. The library behind it: :mod:`dgml_tf.export`
(``export_for_serving``, ``export_onnx``, ``write_serving_configs``).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from pipelines.image_limits import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["main", "run"]


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
    define_boolean("fold_batch_norm", True, "Serve each BatchNorm after a linear Conv2D folded "
                   "into it (same outputs, checked at export; --nofold_batch_norm keeps them "
                   "apart).")
    define_list("labels", [], "Version labels for models.config, e.g. stable=3,canary=4.")


def main(argv: Sequence[str], FLAGS) -> int:  # noqa: N803 (absl's naming)
    """Runs the CLI with parsed ``FLAGS``; ``argv`` are the non-flag arguments."""
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    if bool(FLAGS.keras_model) == bool(FLAGS.run_dir):
        raise SystemExit("Pass exactly one of --keras_model=<file.keras> or --run_dir=<run dir>.")
    if not FLAGS.base_dir:
        raise SystemExit("--base_dir is required (TF Serving's model base directory).")
    from dgml_tf.export.savedmodel import as_pair, export_and_write_configs
    from dgml_tf.export.serving_configs import parse_labels

    result = export_and_write_configs(
        FLAGS.keras_model or FLAGS.run_dir,
        FLAGS.base_dir,
        FLAGS.model_name,
        labels=parse_labels(FLAGS.labels),
        onnx=FLAGS.onnx,
        version=FLAGS.version,
        image_size=as_pair([int(s) for s in FLAGS.image_size]),
        resize_size=FLAGS.resize_size,
        max_image_pixels=FLAGS.max_image_pixels,
        fold_batch_norm=FLAGS.fold_batch_norm,
    )
    print(f"SavedModel: {result.version_dir}  fingerprint {result.fingerprint}")
    if result.onnx_path is not None:
        print(f"ONNX: {result.onnx_path}")
    for file_path in result.configs.values():
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
