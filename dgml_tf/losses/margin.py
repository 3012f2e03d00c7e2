"""Margin loss with distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding
Learning", ICCV 2017), per group, as the DGML authors train their headline models."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from dgml_tf.losses.class_betas import ClassBetas
from dgml_tf.losses.grouped_loss import GroupedMetricLoss
from dgml_tf.miners.distance_weighted import DistanceWeightedMiner
from dgml_tf.distances import l2_normalize, safe_sqrt, squared_euclidean
from dgml_tf.miners.triplets import TripletMiner


@keras.saving.register_keras_serializable(package="dgml_tf")
class MarginLoss(GroupedMetricLoss):
    """Margin loss with class- and group-specific learnable boundaries ``beta``.

    For each group, on unit group vectors, the miner gives every anchor ``a`` a positive
    ``p`` and a negative ``n`` (default :class:`dgml_tf.miners.DistanceWeightedMiner`);
    each triplet costs ``relu(d_ap - beta + margin) + relu(beta - d_an + margin)`` with
    ``beta = betas[label(a), group]``. The group's loss is the sum over triplets divided by
    the number of triplets with a non-zero term (the sum itself when there is none); anchors
    the miner could not serve are skipped. The loss averages the groups.

    Training the betas: they live in :class:`ClassBetas` (``loss.class_betas``), a Keras
    layer. For ``model.fit``, attach it to the model (``model.class_betas =
    loss.class_betas``) so the optimizer sees it; a custom loop takes
    ``loss.trainable_variables`` into its own optimizer group (authors: lr 5e-5, no weight
    decay). Pass ``class_betas`` to share one instance between losses or to restore trained
    values.

    Labels must be training-class ids in ``[0, num_classes)`` (remap them if the training
    classes are not contiguous).

    Args:
        num_classes: number of training classes.
        num_groups: K (a ``(B, D)`` input is split into K equal groups).
        margin: the margin (0.2).
        initial_beta: starting beta (1.2), used when ``class_betas`` is not given.
        miner: a :class:`dgml_tf.miners.TripletMiner`; default
            ``DistanceWeightedMiner(lower_cutoff=0.5, upper_cutoff=None, seed=seed)``.
        class_betas: an existing :class:`ClassBetas` of shape ``(num_classes, num_groups)``.
        seed: seed of the default miner (ignored when ``miner`` is given).
        name, reduction, dtype: as for :class:`keras.losses.Loss`.

    Examples:

    >>> import numpy as np
    >>> loss = MarginLoss(num_classes=2, num_groups=1, seed=0)
    >>> x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], "float32")
    >>> # d_ap = 0, d_an = sqrt(2): only relu(0 - 1.2 + 0.2) = 0 and relu(1.2 - 1.414 + 0.2) = 0
    >>> float(loss(np.array([0, 0, 1, 1]), x))
    0.0
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        margin: float = 0.2,
        initial_beta: float = 1.2,
        miner: Optional[TripletMiner] = None,
        class_betas: Optional[ClassBetas] = None,
        seed: Optional[int] = None,
        name: str = "margin_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(num_groups=num_groups, name=name, reduction=reduction, dtype=dtype)
        if class_betas is None:
            class_betas = ClassBetas(num_classes, num_groups, initial_value=initial_beta)
        elif (class_betas.num_classes, class_betas.num_groups) != (num_classes, num_groups):
            raise ValueError(
                f"MarginLoss: class_betas has shape ({class_betas.num_classes}, "
                f"{class_betas.num_groups}) but the loss was built for num_classes={num_classes}, "
                f"num_groups={num_groups}."
            )
        if miner is not None and isinstance(miner, dict):
            miner = keras.saving.deserialize_keras_object(miner)
        if miner is not None and not isinstance(miner, TripletMiner):
            raise TypeError(
                f"MarginLoss: miner must be a dgml_tf.miners.TripletMiner; got {type(miner)!r}."
            )
        self.num_classes = num_classes
        self.margin = float(margin)
        self.initial_beta = float(initial_beta)
        self.seed = seed
        self.miner = miner if miner is not None else DistanceWeightedMiner(seed=seed)
        self.class_betas = class_betas

    @property
    def betas(self):
        """The ``(num_classes, num_groups)`` beta variable."""
        return self.class_betas.betas

    @property
    def trainable_variables(self) -> list:
        return self.class_betas.trainable_variables

    def group_loss(self, labels, embeddings, group_index: int, seed=None):
        unit = l2_normalize(embeddings)
        triplets = self.miner(unit, labels, seed=seed)
        d_ap = safe_sqrt(squared_euclidean(unit, ops.take(unit, triplets.positives, axis=0)))
        d_an = safe_sqrt(squared_euclidean(unit, ops.take(unit, triplets.negatives, axis=0)))
        beta = self.class_betas.for_labels(labels, group_index)
        valid = ops.cast(triplets.valid, "float32")
        positive_term = ops.relu(d_ap - beta + self.margin) * valid
        negative_term = ops.relu(beta - d_an + self.margin) * valid
        total = ops.sum(positive_term + negative_term)
        active = ops.sum(
            ops.cast(ops.logical_or(positive_term > 0, negative_term > 0), "float32")
        )
        return ops.where(active > 0, total / ops.maximum(active, 1.0), total)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "margin": self.margin,
                "initial_beta": self.initial_beta,
                "miner": keras.saving.serialize_keras_object(self.miner),
                "seed": self.seed,
            }
        )
        return config
