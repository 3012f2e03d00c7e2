"""Class-balanced sampler properties: P x K exact, whole classes per replica, seeded streams."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from pipelines.sampling import ClassBalancedSampler

# 7 classes of uneven sizes; class 6 has a single example.
LABELS = np.repeat(np.arange(7), [5, 3, 8, 2, 4, 6, 1])


def _batches(sampler, steps):
    return [b.numpy() for b in sampler.index_dataset().take(steps)]


def _check_class_major(indices, labels, p, k):
    """P distinct classes, each occupying one contiguous run of exactly K positions."""
    batch_labels = labels[indices].reshape(p, k)
    assert np.all(batch_labels == batch_labels[:, :1]), batch_labels
    assert len(set(batch_labels[:, 0])) == p
    return batch_labels[:, 0]


@pytest.mark.parametrize("replace", [True, False])
def test_every_batch_is_p_classes_by_k_images(replace):
    sampler = ClassBalancedSampler(LABELS, batch_classes=3, images_per_class=2, replace=replace, seed=5)
    for indices in _batches(sampler, 60):
        assert indices.shape == (6,)
        classes = _check_class_major(indices, LABELS, 3, 2)
        if not replace:
            assert 6 not in classes
            assert len(set(indices)) == 6  # K distinct examples per class


def test_without_replacement_excludes_small_classes_with_report():
    sampler = ClassBalancedSampler(LABELS, batch_classes=2, images_per_class=3, replace=False)
    assert sampler.excluded_classes == {3: 2, 6: 1}
    seen = collections.Counter()
    for indices in _batches(sampler, 80):
        seen.update(_check_class_major(indices, LABELS, 2, 3).tolist())
        assert len(set(indices)) == 6
    assert set(seen) == {0, 1, 2, 4, 5}


def test_with_replacement_keeps_a_single_image_class():
    sampler = ClassBalancedSampler(LABELS, batch_classes=7, images_per_class=3, replace=True, seed=1)
    indices = _batches(sampler, 1)[0]
    classes = _check_class_major(indices, LABELS, 7, 3)
    assert sorted(classes) == list(range(7))
    lone = indices.reshape(7, 3)[list(classes).index(6)]
    assert lone.tolist() == [int(np.flatnonzero(LABELS == 6)[0])] * 3


def test_classes_and_examples_are_drawn_uniformly():
    labels = np.repeat(np.arange(10), 4)
    sampler = ClassBalancedSampler(labels, batch_classes=5, images_per_class=2, seed=0)
    class_counts, example_counts = collections.Counter(), collections.Counter()
    steps = 400
    for indices in _batches(sampler, steps):
        class_counts.update(labels[indices[::2]].tolist())
        example_counts.update(indices.tolist())
    # each class is chosen with probability P / C = 0.5: 200 expected, sd 10
    assert all(150 < class_counts[c] < 250 for c in range(10)), class_counts
    # each example: 200 class picks x 2 draws x 1/4 = 100 expected
    assert all(60 < example_counts[i] < 140 for i in range(40)), example_counts


def test_same_seed_same_stream_different_seed_different_stream():
    first = _batches(ClassBalancedSampler(LABELS, 3, seed=11), 20)
    again = _batches(ClassBalancedSampler(LABELS, 3, seed=11), 20)
    other = _batches(ClassBalancedSampler(LABELS, 3, seed=12), 20)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    # step t is a pure function of (seed, t): no hidden state
    sampler = ClassBalancedSampler(LABELS, 3, seed=11)
    np.testing.assert_array_equal(sampler.indices_for_step(tf.constant(7, tf.int64)).numpy(), first[7])


def test_per_replica_slices_hold_whole_classes():
    sampler = ClassBalancedSampler(LABELS, batch_classes=4, images_per_class=2, seed=3, num_replicas=2)
    for indices in _batches(sampler, 30):
        for replica_slice in np.split(indices, 2):
            counts = collections.Counter(LABELS[replica_slice].tolist())
            assert sorted(counts.values()) == [2, 2]


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_replicas=2"):
        ClassBalancedSampler(LABELS, batch_classes=3, num_replicas=2)
    with pytest.raises(ValueError, match="exceeds the 5 usable classes"):
        ClassBalancedSampler(LABELS, batch_classes=6, images_per_class=3, replace=False)
    with pytest.raises(ValueError, match="must both be >= 1"):
        ClassBalancedSampler(LABELS, batch_classes=2, images_per_class=0)


def test_steps_per_epoch_covers_the_examples():
    assert ClassBalancedSampler(LABELS, batch_classes=3, images_per_class=2).steps_per_epoch() == 29 // 6
    assert ClassBalancedSampler([0, 0, 1, 1], batch_classes=2, images_per_class=4).steps_per_epoch() == 1
