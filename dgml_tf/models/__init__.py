"""Model builders: backbones (raw pixels -> feature map) and the full embedding model.

``build_embedding_model`` is the entry point; ``get_backbone`` and the backbone registry,
``FrozenBatchNormalization`` and ``parameter_groups`` are its building blocks.
"""

from dgml_tf.models.backbones import available_backbones, get_backbone, register_backbone
from dgml_tf.models.builder import HEADS, build_embedding_model
from dgml_tf.models.frozen_batch_norm import (
    FrozenBatchNormalization,
    freeze_batch_norm_statistics,
)
from dgml_tf.models.parameter_groups import PARAMETER_GROUP_NAMES, parameter_groups
from dgml_tf.models.small_cnn import build_small_cnn

__all__ = [
    "FrozenBatchNormalization",
    "HEADS",
    "PARAMETER_GROUP_NAMES",
    "available_backbones",
    "build_embedding_model",
    "build_small_cnn",
    "freeze_batch_norm_statistics",
    "get_backbone",
    "parameter_groups",
    "register_backbone",
]
