"""tf.data pipelines that turn records into (images, labels) batches for training and evaluation.

Output contract (DEVELOPERS.md): images are float32 RGB with values in [0, 255], shape
(batch, S, S, 3); labels are int64. Normalisation matching the chosen backbone (ImageNet mean/std
or [-1, 1]) happens inside the model, so these pipelines, the export signatures and the REST
service all feed the same raw pixels.

Train: class-balanced P x K batches (see :mod:`pipelines.sampling`), random resized crop and
horizontal flip. Evaluation: resize the shorter side to ``resize_size`` then centre-crop
``image_size`` (256 -> 224 for photos; e.g. 32 -> 32 for 28 px in-memory sets), in record order.
Unreadable files are removed before sampling (:mod:`pipelines.image_check`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from pipelines.decoding import array_to_rgb, decode_rgb_window, read_rgb
from pipelines.image_check import check_image_files
from pipelines.records import DatasetSplits, Record
from pipelines.sampling import AUGMENT_STREAM, ClassBalancedSampler
from pipelines.transforms import (
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    crop_and_flip_seeds,
    eval_transform,
    random_crop_window,
    resize_and_flip,
    train_transform,
)

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class TrainPipeline:
    """A training stream and what it is made of.

    Attributes:
        dataset: infinite (images, labels) batches of P * K (a distributed dataset when a
            strategy was given).
        sampler: the ClassBalancedSampler (batch_size, excluded_classes, ...).
        steps_per_epoch: the epoch length in steps for ``fit``/custom loops.
        records: the records actually sampled from (unreadable files removed).
        skipped: files removed by the validation pass, with reasons.
    """

    dataset: object
    sampler: ClassBalancedSampler
    steps_per_epoch: int
    records: list
    skipped: list


def _unpack(records_or_splits, arrays, split: str) -> Tuple[list, Optional[np.ndarray]]:
    if isinstance(records_or_splits, DatasetSplits):
        if arrays is not None:
            raise ValueError("pass `arrays` only with a list of records; DatasetSplits carries its own.")
        return list(records_or_splits.split(split)), records_or_splits.arrays
    return list(records_or_splits), arrays


def _kind(records: Sequence[Record], arrays: Optional[np.ndarray]) -> str:
    if not records:
        raise ValueError("no records to build a pipeline from (the split is empty).")
    in_memory = [isinstance(r.source, (int, np.integer)) for r in records]
    if all(in_memory):
        if arrays is None:
            raise ValueError(
                "records index in-memory images (integer sources) but `arrays` is None; pass "
                "DatasetSplits or arrays=splits.arrays."
            )
        if arrays.ndim != 4 or arrays.dtype != np.uint8:
            raise ValueError(
                f"arrays must be uint8 (N, H, W, C), got {arrays.dtype} {arrays.shape}."
            )
        return "memory"
    if any(in_memory):
        raise ValueError("records mix file paths and in-memory indices; use one kind per pipeline.")
    return "files"


def _prepare(records, arrays, check_files: bool, cache_dir: Optional[str]):
    """Validated records, skipped files, a function index -> uint8 RGB image of the i-th kept
    record, and (files only, else None) a function (index, window_of) -> the decoded window."""
    kind = _kind(records, arrays)
    skipped = []
    if kind == "files":
        if check_files:
            check = check_image_files(records, cache_dir=cache_dir)
            records, skipped = check.valid, check.skipped
            if not records:
                raise ValueError(
                    f"all {len(skipped)} image files failed to decode, e.g. "
                    f"{skipped[0].path}: {skipped[0].reason}"
                )
        paths = tf.constant([str(r.source) for r in records])

        def load(index):
            return read_rgb(tf.gather(paths, index))

        def load_window(index, window_of):
            return decode_rgb_window(tf.io.read_file(tf.gather(paths, index)), window_of)
    else:
        load_window = None
        # Only the rows these records use go into the graph, not the whole array.
        images = tf.constant(arrays[np.asarray([int(r.source) for r in records])])

        def load(index):
            return array_to_rgb(tf.gather(images, index))
    return records, skipped, load, load_window


def build_train_pipeline(
    records_or_splits: Union[DatasetSplits, Sequence[Record]],
    arrays: Optional[np.ndarray] = None,
    *,
    batch_classes: int,
    images_per_class: int = 2,
    image_size: int = 224,
    seed: int = 0,
    augment: bool = True,
    replace: bool = True,
    num_replicas: int = 1,
    strategy: Optional[tf.distribute.Strategy] = None,
    resize_size: Optional[int] = None,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    check_files: bool = True,
    cache_dir: Optional[str] = None,
    cache_decoded: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    flip: bool = True,
) -> TrainPipeline:
    """Builds the class-balanced training stream.

    Args:
        records_or_splits: DatasetSplits (its ``train`` split is used) or a list of records.
        arrays: in-memory images when ``records_or_splits`` is a list with integer sources.
        batch_classes: P, classes per global batch.
        images_per_class: K, images per class (2 as in the paper).
        image_size: output side S of the square crops.
        seed: fixes the class/example draws and the augmentation.
        augment: random resized crop + horizontal flip; False applies the evaluation transform.
        replace: draw the K images of a class with replacement.
        num_replicas: replicas the global batch is split across (P must be divisible by it).
        strategy: a tf.distribute strategy; sets ``num_replicas`` from it and returns
            ``strategy.experimental_distribute_dataset(...)``.
        resize_size: shorter side for ``augment=False`` (default ``image_size * 8 // 7``).
        scale, ratio: random resized crop area fraction and aspect ranges.
        check_files: decode every file once first and drop unreadable ones (cached in
            ``cache_dir/image_check.json``). With False the caller guarantees every file decodes:
            an unreadable file then stops the stream (dropping it inside the stream would break
            the exact P x K batches).
        cache_dir: where the validation report lives (None: no cache).
        cache_decoded: for small on-disk sets: decode every image once, resized (shorter side)
            and centre-cropped to this square size, and sample from memory afterwards.
        steps_per_epoch: override the default (examples // batch size).
        flip: random horizontal flips when augmenting; turn off where a mirror image is
            another class (characters: b/d, p/q).

    Returns:
        TrainPipeline.

    Example:
        >>> pipe = build_train_pipeline(splits, batch_classes=56, images_per_class=2)  # doctest: +SKIP
        >>> images, labels = next(iter(pipe.dataset))  # (112, 224, 224, 3) float32, (112,) int64
    """
    records, arrays = _unpack(records_or_splits, arrays, "train")
    if strategy is not None:
        num_replicas = strategy.num_replicas_in_sync
    if cache_decoded:
        records, arrays, skipped = decode_to_array(
            records, arrays, cache_decoded, check_files=check_files, cache_dir=cache_dir
        )
        records, _, load, load_window = _prepare(records, arrays, False, None)
    else:
        records, skipped, load, load_window = _prepare(records, arrays, check_files, cache_dir)
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    sampler = ClassBalancedSampler(
        labels, batch_classes, images_per_class, replace=replace, seed=seed,
        num_replicas=num_replicas,
    )
    label_table = tf.constant(labels)
    augment_base = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), AUGMENT_STREAM
    )
    resize_size = resize_size or image_size * 8 // 7

    def example(element_number, index):
        if not augment:
            return eval_transform(load(index), image_size, resize_size), tf.gather(label_table, index)
        element_seed = tf.random.experimental.stateless_fold_in(augment_base, element_number)
        if load_window is None:
            image = train_transform(load(index), image_size, element_seed, scale, ratio, flip)
        else:
            # Same draws as train_transform, but only the crop window of a JPEG is decoded.
            crop_seed, flip_seed = crop_and_flip_seeds(element_seed)
            window = load_window(
                index, lambda shape: random_crop_window(shape, crop_seed, scale, ratio)
            )
            image = resize_and_flip(window, image_size, flip_seed, flip)
        return image, tf.gather(label_table, index)

    dataset = (
        sampler.index_dataset()
        .unbatch()
        .enumerate()  # element numbers seed the augmentation: reproducible under parallel map
        .map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(sampler.batch_size, drop_remainder=True)  # each step's P*K elements, in order
        .prefetch(AUTOTUNE)
    )
    if strategy is not None:
        dataset = strategy.experimental_distribute_dataset(dataset)
    return TrainPipeline(
        dataset=dataset,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch or sampler.steps_per_epoch(),
        records=records,
        skipped=skipped,
    )


def make_train_dataset(
    records_or_splits: Union[DatasetSplits, Sequence[Record]],
    arrays: Optional[np.ndarray] = None,
    **kwargs,
):
    """The infinite (images, labels) stream of :func:`build_train_pipeline` (same arguments).

    Example:
        >>> ds = make_train_dataset(splits, batch_classes=8, image_size=32)  # doctest: +SKIP
    """
    return build_train_pipeline(records_or_splits, arrays, **kwargs).dataset


def _eval_examples(records, arrays, image_size, resize_size, check_files, cache_dir):
    records, skipped, load, _ = _prepare(records, arrays, check_files, cache_dir)
    labels = np.asarray([r.label for r in records], dtype=np.int64)

    def example(index):
        return eval_transform(load(index), image_size, resize_size), tf.gather(labels, index)

    dataset = tf.data.Dataset.range(len(records)).map(
        example, num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return dataset, records, skipped


def make_eval_dataset(
    records_or_splits: Union[DatasetSplits, Sequence[Record]],
    arrays: Optional[np.ndarray] = None,
    *,
    split: str = "test",
    image_size: int = 224,
    resize_size: int = 256,
    batch_size: int = 64,
    check_files: bool = True,
    cache_dir: Optional[str] = None,
    cache: bool = False,
) -> tf.data.Dataset:
    """(images, labels) batches in record order: resize shorter side, centre crop.

    Unreadable files are dropped (the labels travel with the images, so downstream metrics stay
    aligned).

    Args:
        records_or_splits: DatasetSplits (``split`` is used) or a list of records.
        arrays: in-memory images for integer-source records.
        split: which split of a DatasetSplits ("test", "val", "query", "gallery", "train").
        image_size: centre crop side.
        resize_size: shorter side after resizing (>= image_size).
        batch_size: examples per batch; the last batch may be smaller.
        check_files: drop files that do not decode (see :func:`check_image_files`).
        cache_dir: where the validation report lives.
        cache: keep decoded, cropped images in memory after the first pass (small sets).

    Returns:
        tf.data.Dataset of (float32 (B, S, S, 3) in [0, 255], int64 (B,)).

    Example:
        >>> ds = make_eval_dataset(splits, split="test", image_size=32, resize_size=32)  # doctest: +SKIP
    """
    records, arrays = _unpack(records_or_splits, arrays, split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    dataset, _, _ = _eval_examples(records, arrays, image_size, resize_size, check_files, cache_dir)
    if cache:
        dataset = dataset.cache()
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def decode_to_array(
    records: Sequence[Record],
    arrays: Optional[np.ndarray] = None,
    size: int = 256,
    *,
    check_files: bool = True,
    cache_dir: Optional[str] = None,
) -> Tuple[list, np.ndarray, list]:
    """Decodes all images once into a uint8 (N, size, size, 3) array (shorter side resized to
    ``size``, centre-cropped): caching for small on-disk sets.

    Returns:
        (in-memory records indexing the array, the array, skipped files).
    """
    dataset, kept, skipped = _eval_examples(records, arrays, size, size, check_files, cache_dir)
    images = [
        tf.cast(tf.round(image), tf.uint8).numpy()
        for image, _ in dataset.batch(256).prefetch(AUTOTUNE)
    ]
    array = np.concatenate(images) if images else np.zeros((0, size, size, 3), np.uint8)
    in_memory = [Record(i, r.label, r.item_id) for i, r in enumerate(kept)]
    return in_memory, array, skipped
