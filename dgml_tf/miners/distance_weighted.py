"""Distance-weighted negative sampling (Wu et al., "Sampling Matters in Deep Embedding
Learning", ICCV 2017), as the DGML authors' margin loss uses it."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from dgml_tf.distances import safe_sqrt, unit_squared_distance_matrix
from dgml_tf.miners.pairwise import pair_masks
from dgml_tf.miners.stateless_random import split_seed, stateless_uniform
from dgml_tf.miners.triplets import Triplets, TripletMiner

# Keeps log(1 - d^2/4) finite for (numerically) antipodal unit vectors, where d reaches 2.
_MIN_ONE_MINUS_QUARTER_D2 = 1e-6


def negative_log_weights(distances, dimension: int, lower_cutoff: float = 0.5):
    """``log(1/q(d))``, the unnormalised log sampling weight of a negative at distance ``d``.

    ``q(d)`` is the density of pairwise distances between points uniform on the unit sphere
    in ``n = dimension`` dims; ``log(1/q(d)) = (2-n) log d - ((n-3)/2) log(1 - d^2/4)``, with
    ``d`` clamped below at ``lower_cutoff``.
    """
    d = ops.maximum(distances, lower_cutoff)
    one_minus = ops.maximum(1.0 - 0.25 * ops.square(d), _MIN_ONE_MINUS_QUARTER_D2)
    return (2.0 - dimension) * ops.log(d) - ((dimension - 3.0) / 2.0) * ops.log(one_minus)


@keras.saving.register_keras_serializable(package="dgml_tf")
class DistanceWeightedMiner(TripletMiner):
    """For every anchor: a uniform positive and a distance-weighted negative.

    - positive: uniform over the other samples of the anchor's class;
    - negative: drawn with probability proportional to ``1/q(d)`` among samples of other
      classes (:func:`negative_log_weights`; distances clamped below at ``lower_cutoff``,
      optionally set to zero weight above ``upper_cutoff``). The log-weights are shifted by
      their maximum before sampling, so large dimensions do not overflow.

    Distances are computed without gradient. Sampling uses Keras' stateless random ops with a
    :class:`keras.random.SeedGenerator`, so a given ``seed`` reproduces the same draws (also
    inside ``tf.function``/XLA and ``jax.jit``). A per-call stateless ``seed`` tensor (what
    :class:`dgml_tf.train.MetricLearningModel` passes, derived from its seed and the step)
    overrides the generator: the draws of a step then never depend on earlier steps, so a
    resumed run equals an uninterrupted one (on every backend; the draws themselves come from
    each backend's RNG, see :mod:`dgml_tf.miners.stateless_random`). Create the miner inside
    ``strategy.scope()`` when training under a ``tf.distribute`` strategy (the seed state is a
    variable).

    Args:
        lower_cutoff: distances below this are clamped (0.5 in Wu et al. and the authors' code).
        upper_cutoff: if set, negatives farther than this get zero weight (the authors' code
            has 1.4 but switched off; default None). An anchor whose negatives are all beyond
            it is skipped.
        seed: integer seed; None draws one at random.

    Examples:

    >>> import numpy as np
    >>> miner = DistanceWeightedMiner(seed=1)
    >>> x = np.eye(4, dtype="float32")
    >>> triplets = miner(x, np.array([0, 0, 1, 1]))
    >>> triplets.positives.numpy().tolist()
    [1, 0, 3, 2]
    """

    def __init__(
        self,
        lower_cutoff: float = 0.5,
        upper_cutoff: Optional[float] = None,
        seed: Optional[int] = None,
    ):
        if lower_cutoff <= 0:
            raise ValueError(
                f"DistanceWeightedMiner: lower_cutoff must be > 0 (log d is undefined at 0); "
                f"got {lower_cutoff}."
            )
        if upper_cutoff is not None and upper_cutoff <= lower_cutoff:
            raise ValueError(
                f"DistanceWeightedMiner: upper_cutoff ({upper_cutoff}) must exceed lower_cutoff "
                f"({lower_cutoff}), or be None to disable it."
            )
        self.lower_cutoff = float(lower_cutoff)
        self.upper_cutoff = None if upper_cutoff is None else float(upper_cutoff)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def negative_logits(self, embeddings, labels):
        """Log-probabilities (up to a constant) of each negative, ``-inf`` where excluded.

        Returns:
            ``(logits (B, B), has_negative (B,))``; rows without an admissible negative are
            all zeros (and flagged), so they can still be fed to a sampler.
        """
        embeddings = ops.stop_gradient(ops.cast(embeddings, "float32"))
        dimension = embeddings.shape[-1]
        distances = ops.maximum(
            safe_sqrt(unit_squared_distance_matrix(embeddings)), self.lower_cutoff
        )
        _, negative = pair_masks(labels)
        admissible = negative > 0
        if self.upper_cutoff is not None:
            admissible = ops.logical_and(admissible, distances <= self.upper_cutoff)
        log_weights = negative_log_weights(distances, dimension, self.lower_cutoff)
        masked = ops.where(admissible, log_weights, float("-inf"))
        has_negative = ops.any(admissible, axis=1)
        row_max = ops.max(ops.where(admissible, log_weights, -3.0e38), axis=1, keepdims=True)
        logits = ops.where(admissible, masked - row_max, float("-inf"))
        logits = ops.where(ops.expand_dims(has_negative, 1), logits, 0.0)
        return logits, has_negative

    def _draw(self, logits, seed):
        """One index per row, drawn with probability softmax(logits), by the Gumbel-max trick.

        argmax(logits + Gumbel noise) has exactly the categorical law, and unlike
        ``stateless_categorical`` (StatelessMultinomial) it has XLA kernels, so training with
        ``jit_compile=True`` works.
        """
        shape = ops.shape(logits)
        if seed is None:
            uniform = keras.random.uniform(shape, minval=1e-20, maxval=1.0,
                                           seed=self.seed_generator)
        else:
            uniform = stateless_uniform(shape, seed, minval=1e-20, maxval=1.0)
        gumbel = -ops.log(-ops.log(uniform))
        return ops.argmax(logits + gumbel, axis=-1)

    def mine(self, embeddings, labels, seed=None) -> Triplets:
        labels = ops.cast(labels, "int32")
        anchors = ops.arange(ops.shape(labels)[0], dtype="int32")
        positive, _ = pair_masks(labels)
        has_positive = ops.any(positive > 0, axis=1)
        positive_logits = ops.where(positive > 0, 0.0, float("-inf"))
        positive_logits = ops.where(ops.expand_dims(has_positive, 1), positive_logits, 0.0)
        negative_logits, has_negative = self.negative_logits(embeddings, labels)

        positive_seed = negative_seed = None
        if seed is not None:
            positive_seed, negative_seed = split_seed(seed, 2)
        positives = ops.cast(self._draw(positive_logits, positive_seed), "int32")
        negatives = ops.cast(self._draw(negative_logits, negative_seed), "int32")
        valid = ops.logical_and(has_positive, has_negative)
        return Triplets(
            positives=ops.where(valid, positives, anchors),
            negatives=ops.where(valid, negatives, anchors),
            valid=valid,
        )

    def get_config(self) -> dict:
        return {
            "lower_cutoff": self.lower_cutoff,
            "upper_cutoff": self.upper_cutoff,
            "seed": self.seed,
        }
