"""Losses: the diversity term between groups and metric losses applied per group.

- :func:`diversity_loss`, :class:`DiversityLoss`, :class:`DiversityRegularizer`: the paper's
  binomial-deviance diversity term ``lambda_div * L_div``.
- :class:`MarginLoss` (with :class:`ClassBetas`), :class:`BinomialDevianceLoss`,
  :class:`ContrastiveLoss`: metric losses on integer labels and ``(B, K, d)`` / ``(B, D)``
  embeddings, applied per group and averaged (base class :class:`GroupedMetricLoss`).
- :class:`PerGroupLoss`: the same for any pairwise loss, tensorflow-similarity's included.
- :data:`LOSSES`, :func:`available_losses`, :func:`get_loss`: the losses ``--loss`` names.

All are registered Keras serializables (package ``dgml_tf``).
"""

from dgml_tf._lazy import lazy_exports

# Lazy (PEP 562): ``dgml_tf.flags`` lists the loss names from ``registry`` before any CLI has
# decided oneDNN, which must happen before Keras (and so TensorFlow) is first imported.
_EXPORTS = {
    "BinomialDevianceLoss": "dgml_tf.losses.binomial_deviance",
    "ClassBetas": "dgml_tf.losses.class_betas",
    "ContrastiveLoss": "dgml_tf.losses.contrastive",
    "DiversityLoss": "dgml_tf.losses.diversity",
    "diversity_loss": "dgml_tf.losses.diversity",
    "DiversityRegularizer": "dgml_tf.losses.diversity_regularizer",
    "GroupedMetricLoss": "dgml_tf.losses.grouped_loss",
    "MarginLoss": "dgml_tf.losses.margin",
    "PerGroupLoss": "dgml_tf.losses.per_group",
    "LOSSES": "dgml_tf.losses.registry",
    "available_losses": "dgml_tf.losses.registry",
    "get_loss": "dgml_tf.losses.registry",
}

__all__ = [
    "BinomialDevianceLoss",
    "ClassBetas",
    "ContrastiveLoss",
    "DiversityLoss",
    "DiversityRegularizer",
    "GroupedMetricLoss",
    "LOSSES",
    "MarginLoss",
    "PerGroupLoss",
    "available_losses",
    "diversity_loss",
    "get_loss",
    "register_serializables",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def register_serializables() -> None:
    """Imports every loss module, registering its Keras serializables (what loading a
    ``.keras`` file holding our losses needs; the package itself loads lazily)."""
    import importlib

    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(module)
