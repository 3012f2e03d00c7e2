"""``load_dataset``: one entry point over every registered dataset reader."""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Union

from pipelines.errors import UnknownDatasetError
from pipelines.records import DatasetSplits
from pipelines.validation_split import with_validation

# name -> "module:function"; modules are imported on first use so optional readers (glyphs needs
# fonts, Cars196 needs scipy) cost nothing until asked for.
_READERS: Dict[str, Union[str, Callable[..., DatasetSplits]]] = {
    "cub": "pipelines.cub:load_cub",
    "cars196": "pipelines.cars196:load_cars196",
    "sop": "pipelines.sop:load_sop",
    "inshop": "pipelines.inshop:load_inshop",
    "fashion_mnist": "pipelines.fashion_mnist:load_fashion_mnist",
    "glyphs": "pipelines.glyphs:load_glyphs",
}

DEFAULT_VAL_CLASSES = 0.1


def register_dataset(name: str, reader: Union[str, Callable[..., DatasetSplits]]) -> None:
    """Registers ``reader(root=None, seed=0, **options) -> DatasetSplits`` under ``name``.

    Args:
        name: the name ``load_dataset`` accepts.
        reader: a callable, or ``"module:function"`` imported lazily.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}.")
    _READERS[name] = reader


def available_datasets() -> list:
    """Sorted names ``load_dataset`` accepts."""
    return sorted(_READERS)


def _resolve(name: str) -> Callable[..., DatasetSplits]:
    if name not in _READERS:
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}."
        )
    reader = _READERS[name]
    if isinstance(reader, str):
        module_name, function_name = reader.split(":")
        reader = getattr(importlib.import_module(module_name), function_name)
    return reader


def load_dataset(
    name: str,
    root: Optional[str] = None,
    val_classes: Union[int, float] = DEFAULT_VAL_CLASSES,
    seed: int = 0,
    **options,
) -> DatasetSplits:
    """Reads dataset ``name`` and carves a class-disjoint validation split from its train classes.

    Args:
        name: one of ``available_datasets()``: "cub", "cars196", "sop", "inshop",
            "fashion_mnist", "glyphs".
        root: the dataset folder (see each reader's layout); None uses the reader's default
            (Fashion-MNIST and glyphs have one, on-disk datasets raise).
        val_classes: fraction (0 < f < 1) or number of training classes moved to ``val``;
            0 keeps all training classes. A reader that returns its own non-empty ``val`` keeps it.
        seed: seeds which classes become validation; also passed to the reader (readers with
            their own randomness, e.g. glyphs, use it).
        **options: passed to the reader.

    Returns:
        DatasetSplits.

    Example:
        >>> splits = load_dataset("fashion_mnist", val_classes=1, seed=0)  # doctest: +SKIP
        >>> len({r.label for r in splits.val})  # doctest: +SKIP
        1
    """
    splits = _resolve(name)(root=root, seed=seed, **options)
    if not isinstance(splits, DatasetSplits):
        raise TypeError(f"reader for {name!r} returned {type(splits).__name__}, not DatasetSplits.")
    if not splits.train and not splits.test and not splits.query:
        example = f" e.g. {splits.skipped[0].path}: {splits.skipped[0].reason}" if splits.skipped else ""
        raise ValueError(
            f"{name}: no usable records under root={root!r} ({len(splits.skipped)} files "
            f"skipped{example}). Check that the images were unpacked next to the index files."
        )
    if not splits.val and val_classes and splits.train:
        with_validation(splits, val_classes, seed)
    return splits
