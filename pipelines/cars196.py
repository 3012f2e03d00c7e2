"""Cars196 (Stanford Cars) reader: first 98 classes train, last 98 test (zero-shot protocol)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from pipelines.errors import DatasetLayoutError
from pipelines.layout import find_root, keep_existing
from pipelines.records import DatasetSplits, Record

CARS_LAYOUT = """\
  <root>/                         (or <root>/stanford_cars/ or <root>/cars196/)
      cars_annos.mat              struct "annotations" with fields relative_im_path, class
                                  (1..196), and "class_names"
      car_ims/000001.jpg ..."""

NUM_TRAIN_CLASSES = 98


def _loadmat(path: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as error:  # scipy arrives with scikit-learn, the "evaluation" extra
        raise ImportError(
            "Reading Cars196's cars_annos.mat needs scipy. Install it with "
            "`pip install scipy` (or `pip install dgml-tf[evaluation]`, which pulls it in)."
        ) from error
    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises several types for a non-.mat file
        raise DatasetLayoutError(
            "cars196", f"{path!r} is not a readable MATLAB file ({error}).", CARS_LAYOUT
        ) from error


def load_cars196(root: Optional[str] = None, **options) -> DatasetSplits:
    """Reads Cars196 from ``cars_annos.mat`` and ``car_ims/``.

    The archive's own train/test flag is ignored: the zero-shot protocol splits by class.
    Labels are the class ids minus one: 0..97 train, 98..195 test.

    Args:
        root: the folder holding ``cars_annos.mat`` (or its parent, see the layout).
        **options: none are used.

    Returns:
        DatasetSplits with ``train`` and ``test`` filled.

    Example:
        >>> splits = load_cars196("/data/cars196")  # doctest: +SKIP
        >>> len(splits.train), len(splits.test)  # doctest: +SKIP
        (8054, 8131)
    """
    folder = find_root(root, "cars_annos.mat", ["stanford_cars", "cars196"], "cars196", CARS_LAYOUT)
    path = os.path.join(folder, "cars_annos.mat")
    mat = _loadmat(path)
    if "annotations" not in mat:
        raise DatasetLayoutError(
            "cars196", f"{path!r} has no 'annotations' variable (found {sorted(mat)}).",
            CARS_LAYOUT,
        )
    annotations = np.atleast_1d(mat["annotations"])
    names = [str(n) for n in np.atleast_1d(mat.get("class_names", []))]
    train, test = [], []
    for annotation in annotations:
        try:
            relative = str(annotation.relative_im_path)
            label = int(annotation.__dict__["class"]) - 1
        except (AttributeError, KeyError) as error:
            raise DatasetLayoutError(
                "cars196",
                f"{path!r} annotations lack the fields relative_im_path and class ({error}).",
                CARS_LAYOUT,
            ) from error
        record = Record(os.path.join(folder, relative), label, relative)
        (train if label < NUM_TRAIN_CLASSES else test).append(record)
    skipped = []
    return DatasetSplits(
        name="cars196",
        train=keep_existing(train, skipped),
        val=[],
        test=keep_existing(test, skipped),
        skipped=skipped,
        class_names={i: n for i, n in enumerate(names)},
    )
