"""What a run checks and decides before it touches its run directory.

- :func:`validate_run`: the flags, against the number of replicas the strategy has;
- :func:`runtime_decisions`: what this machine decided (oneDNN, op determinism, precision),
  recorded in ``config.json`` under ``runtime``;
- :func:`check_resumable`: a run directory whose checkpoints were trained with other flags is
  refused, naming every changed flag.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping

from dgml_tf import flags as dgml_flags
from dgml_tf import hardware
from dgml_tf.run_dir import RunDir


def validate_run(config: Mapping[str, Any], num_replicas: int) -> None:
    """Raises FlagValidationError listing every problem of ``config`` for ``num_replicas``."""
    errors = dgml_flags.validate_training_flags(config, num_replicas=num_replicas)
    if errors:
        raise dgml_flags.FlagValidationError("Invalid flags:\n  - " + "\n  - ".join(errors))


def check_resumable(run: RunDir, config: Mapping[str, Any]) -> None:
    """Refuses to continue a run whose checkpoints were trained with other flags.

    Args:
        run: the run directory (nothing in it is touched).
        config: the live run config, with this machine's ``runtime`` decisions.

    Raises:
        FlagValidationError: naming every changed flag and the three ways out.
    """
    from dgml_tf.callbacks.checkpointing import POINTER

    checkpoint_dir = run.checkpoint_dir
    has_checkpoint = os.path.isdir(checkpoint_dir) and any(
        n == POINTER or n.startswith("epoch-") for n in os.listdir(checkpoint_dir))
    if not (run.has_config() and has_checkpoint):
        return
    changed = dgml_flags.changed_training_flags(run.read_config(), config)
    if changed:
        raise dgml_flags.FlagValidationError(
            f"{run.path} holds a run trained with other flags:\n  - " + "\n  - ".join(changed)
            + "\nRerun with that run's flags to continue it, pass --noresume to start over in "
            "this directory (its checkpoints, best.keras and logs are moved to "
            "set_aside/<time>-noresume/, not deleted), or choose another --output_dir.")


def runtime_decisions(config: Mapping[str, Any]) -> Dict[str, Any]:
    """What this machine decided for the run (recorded in config.json under ``runtime``):
    oneDNN, op determinism and the precision ``--mixed_precision`` resolves to."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    capabilities = []
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    flags = hardware.cpu_flags()
    return {
        "onednn": {hardware.ONEDNN_VARIABLE: os.environ.get(hardware.ONEDNN_VARIABLE),
                   "source": ("default" if os.environ.get(hardware.ONEDNN_DEFAULTED) == "1"
                              else "environment"),
                   "active": hardware.onednn_active()},
        "deterministic": hardware.resolve_deterministic(config.get("deterministic"), len(gpus)),
        "mixed_precision": hardware.resolve_mixed_precision(
            config["mixed_precision"], flags, capabilities),
        "gpus": [list(c) for c in capabilities],
        "cpu_bf16": hardware.cpu_has_bf16(flags),
    }
