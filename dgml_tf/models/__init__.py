"""Model builders: backbones (raw pixels -> feature map) and the full embedding model.

``build_embedding_model`` is the entry point; ``get_backbone`` and the backbone registry,
``FrozenBatchNormalization`` and ``parameter_groups`` are its building blocks. ``names`` holds
the backbone and head names without Keras (the flags validate them before Keras loads).
"""

from dgml_tf._lazy import lazy_exports

# Lazy (PEP 562): ``dgml_tf.flags`` imports ``dgml_tf.models.names`` before any CLI has decided
# oneDNN, which must happen before Keras (and so TensorFlow) is first imported.
_EXPORTS = {
    "FrozenBatchNormalization": "dgml_tf.models.frozen_batch_norm",
    "freeze_batch_norm_statistics": "dgml_tf.models.frozen_batch_norm",
    "ConvFrozenBatchNorm": "dgml_tf.models.conv_frozen_batch_norm",
    "FoldedBatchNormalization": "dgml_tf.models.conv_frozen_batch_norm",
    "fold_frozen_batch_norm": "dgml_tf.models.conv_frozen_batch_norm",
    "fold_batch_norm_for_inference": "dgml_tf.models.conv_frozen_batch_norm",
    "BACKBONES": "dgml_tf.models.names",
    "HEADS": "dgml_tf.models.names",
    "PARAMETER_GROUP_NAMES": "dgml_tf.models.names",
    "parameter_groups": "dgml_tf.models.variable_groups",
    "available_backbones": "dgml_tf.models.backbones",
    "get_backbone": "dgml_tf.models.backbones",
    "register_backbone": "dgml_tf.models.backbones",
    "build_embedding_model": "dgml_tf.models.builder",
    "build_small_cnn": "dgml_tf.models.small_cnn",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
