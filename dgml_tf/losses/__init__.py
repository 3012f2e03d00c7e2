"""Losses: the diversity term between groups and metric losses applied per group.

- :func:`diversity_loss`, :class:`DiversityLoss`, :class:`DiversityRegularizer`: the paper's
  binomial-deviance diversity term ``lambda_div * L_div``.
- :class:`MarginLoss` (with :class:`ClassBetas`), :class:`BinomialDevianceLoss`,
  :class:`ContrastiveLoss`: metric losses on integer labels and ``(B, K, d)`` / ``(B, D)``
  embeddings, applied per group and averaged (base class :class:`GroupedMetricLoss`).
- :class:`PerGroupLoss`: the same for any pairwise loss, tensorflow-similarity's included.

All are registered Keras serializables (package ``dgml_tf``).
"""

from dgml_tf.losses.binomial_deviance import BinomialDevianceLoss
from dgml_tf.losses.class_betas import ClassBetas
from dgml_tf.losses.contrastive import ContrastiveLoss
from dgml_tf.losses.diversity import DiversityLoss, diversity_loss
from dgml_tf.losses.diversity_regularizer import DiversityRegularizer
from dgml_tf.losses.grouped_loss import GroupedMetricLoss
from dgml_tf.losses.margin import MarginLoss
from dgml_tf.losses.per_group import PerGroupLoss

__all__ = [
    "BinomialDevianceLoss",
    "ClassBetas",
    "ContrastiveLoss",
    "DiversityLoss",
    "DiversityRegularizer",
    "GroupedMetricLoss",
    "MarginLoss",
    "PerGroupLoss",
    "diversity_loss",
]
