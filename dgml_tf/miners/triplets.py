"""What a triplet miner returns, and the small base class every triplet miner follows."""

from __future__ import annotations

from typing import NamedTuple


class Triplets(NamedTuple):
    """One mined triplet per batch element, used as the anchor.

    Fixed-size (one row per anchor) so mining stays XLA-friendly; anchors that could not form
    a triplet (no other sample of their class, or no admissible negative) have
    ``valid == False`` and their own index as positive and negative.

    Attributes:
        positives: int32 ``(B,)`` index of each anchor's positive.
        negatives: int32 ``(B,)`` index of each anchor's negative.
        valid: bool ``(B,)``, whether the anchor's triplet exists.
    """

    positives: object
    negatives: object
    valid: object


class TripletMiner:
    """Base class: picks a positive and a negative for every anchor of a batch.

    Subclasses implement :meth:`mine`; :meth:`__call__` is the public entry point. Miners never
    propagate gradients: they only choose indices.
    """

    def __call__(self, embeddings, labels, seed=None) -> Triplets:
        """Mines triplets.

        Args:
            embeddings: float ``(B, n)`` unit vectors.
            labels: int ``(B,)`` class ids.
            seed: optional stateless seed (int ``(2,)`` tensor). Given, the draws are a pure
                function of it (a resumed run re-draws exactly what the interrupted one did);
                None uses the miner's own seed generator.
        """
        return self.mine(embeddings, labels, seed=seed)

    def mine(self, embeddings, labels, seed=None) -> Triplets:
        raise NotImplementedError(
            f"{type(self).__name__} must implement mine(embeddings, labels, seed=None)."
        )

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
