"""Triplet miners: which positive and negative each anchor of a batch is paired with.

Miners are injected into the losses that need them (``dgml_tf.losses.MarginLoss``).
"""

from dgml_tf.miners.distance_weighted import DistanceWeightedMiner, negative_log_weights
from dgml_tf.miners.triplets import TripletMiner, Triplets

__all__ = ["DistanceWeightedMiner", "TripletMiner", "Triplets", "negative_log_weights"]
