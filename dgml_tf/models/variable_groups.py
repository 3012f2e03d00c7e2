"""Splitting a model's trainable variables into the groups the training recipe treats apart."""

from __future__ import annotations

import keras

from dgml_tf.layers.attentive_grouping import AttentiveGrouping
from dgml_tf.layers.conventional_grouping_head import ConventionalGroupingHead
from dgml_tf.layers.single_embedding_head import SingleEmbeddingHead
from dgml_tf.models.layer_walk import flat_layers
from dgml_tf.models.names import PARAMETER_GROUP_NAMES


def parameter_groups(model: keras.Model) -> dict[str, list]:
    """Trainable variables of ``model`` by role, for per-group learning rates and weight decay.

    The authors' recipe uses different weight decay for the backbone, the key/value maps and
    the queries (method.md, e.g. CUB: 0.003 / 0.003 / 0.001).

    Args:
        model: a model containing (possibly nested) dgml_tf heads.

    Returns:
        ``{"backbone": [...], "key_value": [...], "queries": [...]}``: ``key_value`` holds the
        AttentiveGrouping key, value and projection kernels and the baseline heads' kernels,
        ``queries`` the AttentiveGrouping queries, ``backbone`` every other trainable variable.
        Every trainable variable appears exactly once, in ``model.trainable_variables`` order.
    """
    role_by_id: dict[int, str] = {}
    for layer in flat_layers(model):
        if isinstance(layer, AttentiveGrouping):
            role_by_id[id(layer.queries)] = "queries"
            for variable in (layer.key_kernel, layer.value_kernel,
                             getattr(layer, "projection_kernel", None)):
                if variable is not None:
                    role_by_id[id(variable)] = "key_value"
        elif isinstance(layer, (SingleEmbeddingHead, ConventionalGroupingHead)):
            role_by_id[id(layer.kernel)] = "key_value"
    groups: dict[str, list] = {name: [] for name in PARAMETER_GROUP_NAMES}
    for variable in model.trainable_variables:
        groups[role_by_id.get(id(variable), "backbone")].append(variable)
    return groups
