"""The Recall@K lists each benchmark is reported with."""

from __future__ import annotations

from typing import Tuple

DEFAULT_RECALL_KS: Tuple[int, ...] = (1, 2, 4, 8)

_RECALL_KS = {
    "cub": (1, 2, 4, 8),
    "cars196": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}
_ALIASES = {
    "cub200": "cub", "cub_200_2011": "cub", "cub200_2011": "cub",
    "cars": "cars196", "cars_196": "cars196", "stanford_cars": "cars196",
    "stanford_online_products": "sop", "online_products": "sop",
    "in_shop": "inshop", "deepfashion_inshop": "inshop", "deepfashion": "inshop",
}


def recall_ks_for(dataset_name: str) -> Tuple[int, ...]:
    """Recall@K values of the literature for ``dataset_name``; (1, 2, 4, 8) for other sets.

    Names are matched case-insensitively, ignoring "-" and spaces ("CUB-200-2011" -> cub).

    Example:
        >>> recall_ks_for("sop")
        (1, 10, 100, 1000)
        >>> recall_ks_for("fashion_mnist")
        (1, 2, 4, 8)
    """
    if not isinstance(dataset_name, str):
        raise TypeError(f"dataset_name must be a string, got {type(dataset_name).__name__}.")
    key = dataset_name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    return _RECALL_KS.get(key, DEFAULT_RECALL_KS)
