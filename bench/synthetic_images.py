"""Synthetic photographs for the input-pipeline benchmarks: 500x375 JPEGs of smooth random
content (the size of a typical CUB image), one folder per class."""

from __future__ import annotations

import os

import numpy as np


def write_jpegs(folder: str, num_images: int, num_classes: int, seed: int = 0) -> list:
    """Writes 500x375 JPEGs and returns their records."""
    from PIL import Image

    from pipelines.records import Record

    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        label = i % num_classes
        coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
        path = os.path.join(folder, f"{label:04d}", f"{i:06d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, "JPEG", quality=90)
        records.append(Record(path, label, os.path.relpath(path, folder)))
    return records
