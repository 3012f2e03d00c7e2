"""``python -m dgml_tf.train``: train an attentive-grouping embedding, select it on validation,
report it on test.

Example:
    python -m dgml_tf.train --flagfile=cub.flags --data_dir=/data/CUB_200_2011 \\
        --output_dir=runs/cub
    python -m dgml_tf.train --flagfile=fashion_mnist.flags --output_dir=runs/fm

``--flagfile=NAME.flags`` finds the flagfiles bundled in ``dgml_tf/configs`` from any working
directory (a file of that name in the working directory wins); flags after it override it.

What a run writes into ``--output_dir``:

- ``config.json``: every flag value, and under ``runtime`` what this machine decided (oneDNN,
  op determinism, the precision ``--mixed_precision=auto`` chose);
- ``checkpoints/``: the last two epochs' model + optimizer state (atomic, fsynced, checksummed;
  a rerun of the same command continues from the newest intact one, e.g. after ``kill -9``);
- ``best.keras``: the embedding model of the best validation epoch (``--selection_metric``);
- ``summary.json`` and ``summary.md``: test metrics of ``best.keras`` (concatenated embedding and
  each group), In-Shop as query vs gallery;
- ``tensorboard/``: losses, per-group learning rates, validation metrics, attention images, and
  the embedding projector of the final model.

``--noresume`` first checks the flags and reads the dataset, and only then moves the previous
run's checkpoints, ``best.keras``, config, summaries and logs to ``set_aside/<time>-noresume/``
(printed); nothing is deleted.

Defaults that follow the machine (``dgml_tf/hardware.py``): oneDNN on unless
``TF_ENABLE_ONEDNN_OPTS`` is set, op determinism on for CPU-only training (``--deterministic``),
bf16 mixed precision where the hardware has it (``--mixed_precision=auto``).

Determinism: the training stream of epoch ``e`` is seeded from ``(seed, e)`` and mining
randomness from ``(seed, optimizer step)``, so a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from absl import flags as absl_flags
from absl import logging

from dgml_tf import flagfiles
from dgml_tf import flags as dgml_flags
from dgml_tf import hardware
from dgml_tf.cli import run_cli


def define_flags(values: absl_flags.FlagValues) -> None:
    """Declares every training flag in ``values`` (data, model, training, output)."""
    for define in (dgml_flags.define_data_flags, dgml_flags.define_model_flags,
                   dgml_flags.define_training_flags, dgml_flags.define_output_flags):
        define(values)


def config_from_flags(values: absl_flags.FlagValues) -> Dict[str, Any]:
    """The flag values as a plain dict (the run's ``config.json``), output_dir filled in."""
    return dgml_flags.normalize_config(values.flag_values_dict())


def main(argv: List[str], values: absl_flags.FlagValues) -> int:
    """Validates the flags, decides oneDNN, then runs :func:`dgml_tf.train.train`."""
    if len(argv) > 1:
        print(f"Unexpected arguments {argv[1:]}; every option is a --flag.", file=sys.stderr)
        return 1
    try:
        config = config_from_flags(values)
        for warning in dgml_flags.check_training_flags(config):
            logging.warning(warning)
    except dgml_flags.FlagValidationError as error:
        print(str(error), file=sys.stderr)
        return 1
    # TF reads TF_ENABLE_ONEDNN_OPTS at import: decide before the first TensorFlow import.
    hardware.apply_onednn_default()
    from dgml_tf.callbacks.checkpointing import CheckpointError  # imports TensorFlow
    from dgml_tf.callbacks.nan_guard import NonFiniteLossError
    from dgml_tf.train.training import train

    try:
        train(config)
    except (dgml_flags.FlagValidationError, CheckpointError, NonFiniteLossError) as error:
        print(str(error), file=sys.stderr)
        return 3 if isinstance(error, NonFiniteLossError) else 1
    return 0


def run(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``dgml-train``): resolves bundled flagfiles, then parses flags."""
    try:
        argv = flagfiles.resolve_flagfile_args(argv or sys.argv)
    except flagfiles.UnknownFlagfileError as error:
        print(str(error), file=sys.stderr)
        sys.exit(2)
    run_cli(argv, define_flags, main, __doc__)


if __name__ == "__main__":
    run()
