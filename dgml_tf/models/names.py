"""Names of the built-in backbones and heads, importable without Keras.

The command-line flags (``dgml_tf.flags``) validate ``--backbone`` and ``--head`` before
TensorFlow is imported, so the names live here and the Keras registries use them:
``backbones.py`` registers one builder per name in :data:`BACKBONES` (``register_backbone`` adds
more at run time), ``builder.py`` builds each head in :data:`HEADS`.

Example:
    >>> from dgml_tf.models.names import BACKBONES, HEADS
    >>> "resnet50" in BACKBONES, HEADS[0]
    (True, 'attentive')
"""

from __future__ import annotations

# Built-in backbones, in the order the flags list them.
BACKBONES = ("resnet50", "small_cnn", "mobilenet_v2")
# Embedding heads: attentive grouping (the paper), conventional grouping, one embedding.
HEADS = ("attentive", "grouping", "single")
# Parameter groups of an embedding model (per-group learning rate and weight decay): see
# ``parameter_groups.parameter_groups``; the training recipe adds the loss' own group.
PARAMETER_GROUP_NAMES = ("backbone", "key_value", "queries")
