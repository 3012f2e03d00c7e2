"""Keras 3 layers: the attentive grouping layer, the baseline heads, and small helpers.

All layers are registered as Keras serializables under the package name ``dgml_tf``, so
``.keras`` files containing them load after ``import dgml_tf.layers``.
"""

from dgml_tf.layers.attentive_grouping import AttentiveGrouping
from dgml_tf.layers.conventional_grouping_head import ConventionalGroupingHead
from dgml_tf.layers.flatten_groups import FlattenGroups, flatten_groups
from dgml_tf.layers.pixel_normalization import PixelNormalization
from dgml_tf.layers.single_embedding_head import SingleEmbeddingHead

__all__ = [
    "AttentiveGrouping",
    "ConventionalGroupingHead",
    "FlattenGroups",
    "PixelNormalization",
    "SingleEmbeddingHead",
    "flatten_groups",
]
