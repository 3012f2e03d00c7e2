"""The training augmentations by name (``--augmentation``), without TensorFlow.

Each name maps to the random-resized-crop ranges (area fraction ``scale``, aspect ``ratio``)
that :func:`pipelines.make_train_dataset` takes; the crop itself is in ``pipelines.transforms``.
"small_shift" keeps most of a 28 px garment (a crop of 64-100% of the area is a shift and a
mild zoom); "crop_flip" is the usual ImageNet-style 8-100% crop of photos.

Example:
    >>> resolve_augmentation("auto", image_size=28)
    {'scale': (0.64, 1.0), 'ratio': (0.85, 1.18)}
    >>> resolve_augmentation("none", image_size=224) is None
    True
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

AUGMENTATIONS: Dict[str, Dict[str, Tuple[float, float]]] = {
    "crop_flip": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "small_shift": {"scale": (0.64, 1.0), "ratio": (0.85, 1.18)},
}
# Images up to this side are small sets (Fashion-MNIST, glyphs): "auto" shifts, else crops.
SMALL_IMAGE_SIZE = 64
# Every --augmentation value: "auto" picks by image size, "none" turns augmentation off.
AUGMENTATION_CHOICES = ("auto", *AUGMENTATIONS, "none")


def resolve_augmentation(name: str, image_size: int) -> Optional[Dict[str, Tuple[float, float]]]:
    """Crop ranges of augmentation ``name`` for ``image_size`` px crops, or None for "none".

    Args:
        name: one of :data:`AUGMENTATION_CHOICES`.
        image_size: side of the training crop; decides what "auto" means.

    Raises:
        ValueError: an unknown name (the message lists the choices).
    """
    if name == "auto":
        name = "small_shift" if image_size <= SMALL_IMAGE_SIZE else "crop_flip"
    if name == "none":
        return None
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of "
                         f"{', '.join(AUGMENTATION_CHOICES)}.")
    return AUGMENTATIONS[name]
