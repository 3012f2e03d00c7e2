"""The embedding losses by name: the one list ``--loss`` chooses from.

Each entry builds a per-group loss from the options of a training recipe. Every factory takes
the same keyword options (``num_classes``, ``num_groups``, ``margin``, ``initial_beta``,
``seed``) and uses the ones its loss has, so a recipe passes one set of options to whichever
loss is named. The loss classes are imported only when a loss is built, so the names can be
listed cheaply.

Example:
    >>> from dgml_tf.losses import available_losses, get_loss
    >>> available_losses()
    ('margin', 'binomial', 'contrastive', 'multisimilarity')
    >>> loss = get_loss("margin", num_classes=100, num_groups=3, margin=0.2)
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple


def _margin(*, num_classes: int, num_groups: int, margin: float = 0.2,
            initial_beta: float = 1.2, seed: Optional[int] = None, **_unused):
    from dgml_tf.losses.margin import MarginLoss

    return MarginLoss(num_classes=num_classes, num_groups=num_groups, margin=margin,
                      initial_beta=initial_beta, seed=seed)


def _binomial(*, num_groups: int, **_unused):
    from dgml_tf.losses.binomial_deviance import BinomialDevianceLoss

    return BinomialDevianceLoss(num_groups=num_groups)


def _contrastive(*, num_groups: int, **_unused):
    # The contrastive loss keeps its own margin (1.0): --margin is the margin loss' option.
    from dgml_tf.losses.contrastive import ContrastiveLoss

    return ContrastiveLoss(num_groups=num_groups)


def _multisimilarity(*, num_groups: int, **_unused):
    from tensorflow_similarity.losses import MultiSimilarityLoss

    from dgml_tf.losses.per_group import PerGroupLoss

    # Passed as a class: tfsim 0.17.1 instances default to reduction="auto" (DEVELOPERS.md).
    return PerGroupLoss(MultiSimilarityLoss, num_groups=num_groups)


#: Loss name -> factory taking the recipe's keyword options (see the module docstring).
LOSSES: Dict[str, Callable] = {
    "margin": _margin,
    "binomial": _binomial,
    "contrastive": _contrastive,
    "multisimilarity": _multisimilarity,
}


def available_losses() -> Tuple[str, ...]:
    """The loss names :func:`get_loss` accepts, in the order ``--help`` lists them."""
    return tuple(LOSSES)


def get_loss(name: str, **options):
    """Builds the per-group embedding loss called ``name``.

    Args:
        name: one of :func:`available_losses`.
        **options: ``num_groups`` (K, required), ``num_classes`` (training classes; the margin
            loss keeps one beta per class), ``margin``, ``initial_beta`` and ``seed`` (margin
            loss). Options the named loss has no use for are ignored.

    Returns:
        A Keras loss on integer labels and ``(B, K, d)`` group embeddings.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> loss = get_loss("multisimilarity", num_groups=3)  # doctest: +SKIP
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {list(LOSSES)}.")
    return LOSSES[name](**options)
