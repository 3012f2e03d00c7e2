"""Builds the embedding model: backbone, grouping head, and the contract's output dict."""

from __future__ import annotations

import os
from typing import Sequence

import keras

from dgml_tf.layers.attentive_grouping import AttentiveGrouping
from dgml_tf.layers.conventional_grouping_head import ConventionalGroupingHead
from dgml_tf.layers.flatten_groups import FlattenGroups
from dgml_tf.layers.single_embedding_head import SingleEmbeddingHead
from dgml_tf.models.backbones import get_backbone
from dgml_tf.models.names import HEADS


def build_embedding_model(
    backbone: str = "resnet50",
    input_shape: Sequence[int | None] = (224, 224, 3),
    weights: str | os.PathLike | None = None,
    head: str = "attentive",
    num_groups: int = 3,
    embedding_dim: int = 512,
    reduction: int = 8,
    freeze_batch_norm: bool = True,
    projection: bool = False,
    diversity_weight: float = 0.0,
    name: str | None = None,
    feature_layer: str | None = None,
    trainable_from: str | None = None,
    fold_batch_norm: bool = False,
) -> keras.Model:
    """Builds an image -> embedding model.

    The model takes float32 RGB images in [0, 255], ``(batch, H, W, 3)`` (normalisation is
    inside the backbone) and returns a dict:

    - ``"embedding"``: ``(batch, K * d)``, the concatenated unit group vectors (norm sqrt(K)),
    - ``"group_embeddings"``: ``(batch, K, d)``,
    - ``"attention"``: ``(batch, K, h, w)`` over the backbone's feature map (attentive head
      only).

    ``d = embedding_dim // num_groups`` (512 // 3 = 170, an embedding of 510 dims); the single
    embedding head has K = 1 and d = embedding_dim. Under a mixed-precision global policy the
    outputs are cast to float32.

    Args:
        backbone: a name from ``dgml_tf.models.available_backbones()``.
        input_shape: ``(H, W, 3)``.
        weights: backbone weights: None, "imagenet", "torchvision" (mobilenet_v2) or a path.
        head: "attentive" (AttentiveGrouping), "grouping" (conventional grouping baseline) or
            "single" (single embedding baseline).
        num_groups: K (ignored by "single").
        embedding_dim: D, the total embedding budget split into K groups.
        reduction: key size reduction r of the attentive head.
        freeze_batch_norm: keep the backbone's BatchNorm statistics frozen while training.
        projection: add AttentiveGrouping's shared d x d projection (attentive head only).
        diversity_weight: lambda_div; > 0 attaches ``dgml_tf.losses.DiversityRegularizer``
            to the group embeddings (model.losses). Ignored by "single", whose diversity loss
            is 0 by definition (K = 1).
        name: model name; defaults to ``"<backbone>_<head>"``.
        feature_layer: backbone layer whose output feeds the head (None: the last feature
            map); see :func:`dgml_tf.models.get_backbone`.
        trainable_from: freeze the backbone layers before this one (None: train them all);
            see :func:`dgml_tf.models.get_backbone`.
        fold_batch_norm: fold the frozen BatchNorms into the convolutions before them (same
            function, faster); see :func:`dgml_tf.models.get_backbone`.

    Returns:
        A functional ``keras.Model`` with the output dict above.

    Examples:

    >>> model = build_embedding_model("small_cnn", (32, 32, 3), head="attentive",
    ...                               num_groups=2, embedding_dim=16, freeze_batch_norm=False)
    >>> {k: tuple(v.shape) for k, v in model.output.items()}
    {'embedding': (None, 16), 'group_embeddings': (None, 2, 8), 'attention': (None, 2, 4, 4)}
    """
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; choose one of {list(HEADS)}.")
    if head == "single":
        num_groups = 1
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}.")
    if not isinstance(embedding_dim, int) or embedding_dim < num_groups:
        raise ValueError(
            f"embedding_dim={embedding_dim!r} must be an integer >= num_groups={num_groups} "
            "(each group gets embedding_dim // num_groups dimensions)."
        )
    if projection and head != "attentive":
        raise ValueError(f"projection=True applies only to head='attentive', not {head!r}.")
    if diversity_weight < 0:
        raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}.")
    group_dim = embedding_dim // num_groups
    regularizer = (
        _diversity_regularizer(diversity_weight)
        if diversity_weight > 0 and head != "single" else None
    )

    images = keras.Input(tuple(input_shape), name="image", dtype="float32")
    features = get_backbone(backbone, input_shape, weights, freeze_batch_norm,
                            feature_layer=feature_layer, trainable_from=trainable_from,
                            fold_batch_norm=fold_batch_norm)(images)
    attention = None
    if head == "attentive":
        groups, attention = AttentiveGrouping(
            num_groups=num_groups, group_dim=group_dim, reduction=reduction,
            projection=projection, return_attention=True, activity_regularizer=regularizer,
            name="attentive_grouping",
        )(features)
    elif head == "grouping":
        groups = ConventionalGroupingHead(
            num_groups=num_groups, group_dim=group_dim, activity_regularizer=regularizer,
            name="conventional_grouping",
        )(features)
    else:
        groups = SingleEmbeddingHead(embedding_dim, name="single_embedding")(features)

    embedding = FlattenGroups(name="flatten_groups")(groups)
    outputs = {
        "embedding": _as_float32(embedding, "embedding"),
        "group_embeddings": _as_float32(groups, "group_embeddings"),
    }
    if attention is not None:
        outputs["attention"] = attention  # always float32
    return keras.Model(images, outputs, name=name or f"{backbone}_{head}")


def _as_float32(tensor, name):
    # Losses and retrieval want float32; under mixed precision the heads compute in float16.
    if tensor.dtype == "float32":
        return tensor
    return keras.layers.Activation("linear", dtype="float32", name=f"{name}_float32")(tensor)


def _diversity_regularizer(weight: float):
    try:
        from dgml_tf.losses import DiversityRegularizer
    except ImportError as error:
        raise ImportError(
            "diversity_weight > 0 needs dgml_tf.losses.DiversityRegularizer, which could not be "
            f"imported ({error}). Use diversity_weight=0 or install the complete dgml_tf."
        ) from error
    return DiversityRegularizer(weight)
