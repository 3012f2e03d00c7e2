"""Class-balanced sampling as native tf.data: every batch is P classes x K images.

Batches are laid out class-major (the K images of a class are adjacent, classes follow each
other), so when a global batch is split into contiguous per-replica slices of (P / R) * K
examples, as ``tf.distribute`` does, every replica holds whole classes and never a lone member.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

# Distinct streams derived from the one user seed (fold_in keeps them independent).
SAMPLER_STREAM = 1
AUGMENT_STREAM = 2


class ClassBalancedSampler:
    """Draws, for each step, P distinct classes and K example indices of each.

    Step ``t`` of seed ``s`` is a pure function of (s, t): the stream is reproducible and does not
    depend on how many elements were consumed before.

    Args:
        labels: integer label of each example (the index space the sampler returns).
        batch_classes: P, classes per global batch.
        images_per_class: K, examples per class (default 2, as in the paper's recipe).
        replace: draw the K examples with replacement (a class with fewer than K examples still
            yields K). Without replacement, classes with fewer than K examples are excluded and
            listed in ``excluded_classes``.
        seed: stream seed.
        num_replicas: number of replicas the global batch is split across; P must be divisible
            by it so each replica gets whole classes.

    Example:
        >>> sampler = ClassBalancedSampler([0, 0, 1, 1, 2, 2], batch_classes=2, seed=1)
        >>> batch = sampler.indices_for_step(0)  # int64 (4,): two classes x two examples
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_classes: int,
        images_per_class: int = 2,
        replace: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
    ):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if batch_classes < 1 or images_per_class < 1:
            raise ValueError(
                f"batch_classes (P={batch_classes}) and images_per_class "
                f"(K={images_per_class}) must both be >= 1."
            )
        if num_replicas < 1 or batch_classes % num_replicas:
            raise ValueError(
                f"batch_classes P={batch_classes} is not divisible by num_replicas="
                f"{num_replicas}: each replica must receive whole classes. Choose P as a "
                f"multiple of {num_replicas} (e.g. {max(1, batch_classes // num_replicas) * num_replicas})."
            )
        classes, counts = np.unique(labels, return_counts=True)
        self.excluded_classes = {}
        if not replace:
            too_small = counts < images_per_class
            self.excluded_classes = {int(c): int(n) for c, n in zip(classes[too_small], counts[too_small])}
            if self.excluded_classes:
                logger.warning(
                    "Sampling without replacement needs K=%d images per class; excluding %d "
                    "class(es) with fewer: %s", images_per_class, len(self.excluded_classes),
                    self.excluded_classes,
                )
            classes, counts = classes[~too_small], counts[~too_small]
        if len(classes) < batch_classes:
            raise ValueError(
                f"batch_classes P={batch_classes} exceeds the {len(classes)} usable classes "
                f"({len(self.excluded_classes)} excluded for having fewer than K="
                f"{images_per_class} images). Lower P or sample with replacement."
            )
        self.batch_classes = int(batch_classes)
        self.images_per_class = int(images_per_class)
        self.replace = bool(replace)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.classes = classes
        self.num_examples = int(counts.sum())
        # Class c's examples are order[offsets[c] : offsets[c] + counts[c]].
        keep = np.isin(labels, classes)
        order = np.flatnonzero(keep)[np.argsort(labels[keep], kind="stable")]
        self._order = tf.constant(order, tf.int64)
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]), tf.int64)
        self._counts = tf.constant(counts, tf.int64)
        self._max_count = int(counts.max())

    @property
    def batch_size(self) -> int:
        """Global batch size P * K."""
        return self.batch_classes * self.images_per_class

    def steps_per_epoch(self) -> int:
        """Steps that draw about as many examples as the sampled classes hold (at least 1)."""
        return max(1, math.floor(self.num_examples / self.batch_size))

    def indices_for_step(self, step) -> tf.Tensor:
        """The int64 (P * K,) example indices of global batch ``step``, class-major."""
        base = tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, 0], tf.int64), SAMPLER_STREAM
        )
        step_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))
        class_seed = tf.random.experimental.stateless_fold_in(step_seed, 0)
        member_seed = tf.random.experimental.stateless_fold_in(step_seed, 1)
        num_classes = tf.shape(self._counts)[0]
        keys = tf.random.stateless_uniform([num_classes], class_seed)
        chosen = tf.math.top_k(keys, self.batch_classes).indices  # P distinct classes
        counts = tf.gather(self._counts, chosen)
        offsets = tf.gather(self._offsets, chosen)
        shape = [self.batch_classes, self.images_per_class]
        if self.replace:
            draws = tf.random.stateless_uniform(shape, member_seed)
            positions = tf.cast(tf.floor(draws * tf.cast(counts[:, None], tf.float32)), tf.int64)
            positions = tf.minimum(positions, counts[:, None] - 1)  # guards float rounding at 1.0
        else:
            # A uniform random K-subset: the K smallest of uniform keys over each class's members.
            member_keys = tf.random.stateless_uniform([self.batch_classes, self._max_count], member_seed)
            valid = tf.range(self._max_count, dtype=tf.int64)[None, :] < counts[:, None]
            member_keys = tf.where(valid, member_keys, 2.0)
            positions = tf.cast(tf.math.top_k(-member_keys, self.images_per_class).indices, tf.int64)
        return tf.reshape(tf.gather(self._order, offsets[:, None] + positions), [-1])

    def index_dataset(self) -> tf.data.Dataset:
        """An infinite dataset whose element ``t`` is ``indices_for_step(t)``."""
        return tf.data.Dataset.counter(dtype=tf.int64).map(self.indices_for_step)
