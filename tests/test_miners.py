"""Distance-weighted miner: admissible picks, the closed-form sampling law, reproducibility."""

import numpy as np
import pytest
import tensorflow as tf

from backend_checks.numpy_reference import closed_form_probabilities as _closed_form_probabilities
from backend_checks.numpy_reference import point_at_distance as _point_at_distance
from dgml_tf.miners import DistanceWeightedMiner, Triplets


def _draw(miner, embeddings, labels, draws):
    """``draws`` successive minings, in one graph loop (the seed state advances each time)."""

    @tf.function
    def many():
        arrays = [tf.TensorArray(dtype, size=draws) for dtype in (tf.int32, tf.int32, tf.bool)]
        for i in tf.range(draws):
            triplets = miner(embeddings, labels)
            arrays = [a.write(i, v) for a, v in zip(arrays, triplets)]
        return [a.stack() for a in arrays]

    return tuple(r.numpy() for r in many())


DIM = 6
# Anchor e0 (class 0), a positive (class 0), negatives of classes 1-2 at these distances; 0.2
# and 0.4 are below the 0.5 cutoff, so they must be drawn as often as a negative at 0.5.
NEG_DISTANCES = [0.2, 0.4, 0.9, 1.3, 1.7]


def _fixture_batch():
    rows = [np.eye(DIM)[0], _point_at_distance(0.7, 1, DIM)]
    rows += [_point_at_distance(d, 1 + i, DIM) for i, d in enumerate(NEG_DISTANCES)]
    labels = np.array([0, 0, 1, 1, 2, 2, 1])
    return tf.constant(np.stack(rows), tf.float32), tf.constant(labels, tf.int32)


def test_negative_distribution_matches_closed_form_weights():
    embeddings, labels = _fixture_batch()
    draws = 3000
    _, negatives, _ = _draw(DistanceWeightedMiner(seed=7), embeddings, labels, draws)
    counts = np.bincount(negatives[:, 0], minlength=7)[2:]
    expected = draws * _closed_form_probabilities(NEG_DISTANCES, DIM)
    assert counts.sum() == draws  # never the anchor nor its positive
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 18.5  # 99.9% quantile of chi-square with 4 degrees of freedom
    # The two clamped negatives share one weight: their counts differ only by noise.
    assert abs(counts[0] - counts[1]) < 5 * np.sqrt(expected[0])


def test_same_class_never_sampled_and_positives_uniform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    positives, negatives, valid = _draw(DistanceWeightedMiner(seed=3), x, labels, 600)
    assert valid.all()
    anchors = np.arange(12)
    assert (labels[negatives] != labels[anchors]).all()
    assert (labels[positives] == labels[anchors]).all()
    assert (positives != anchors).all()
    # Anchor 0 has positives 1 and 2, each with probability 1/2 (600 draws: sd ~12).
    assert abs(int((positives[:, 0] == 1).sum()) - 300) < 60


def test_upper_cutoff_excludes_far_negatives():
    embeddings, labels = _fixture_batch()
    _, negatives, _ = _draw(
        DistanceWeightedMiner(upper_cutoff=1.4, seed=1), embeddings, labels, 300
    )
    # Negatives at 1.7 (index 6) are beyond the cutoff.
    assert not (negatives[:, 0] == 6).any()


def test_anchors_without_positive_or_negative_are_invalid():
    x = np.eye(4, dtype="float32")
    triplets = DistanceWeightedMiner(seed=0)(x, np.array([0, 1, 1, 1]))
    assert isinstance(triplets, Triplets)
    np.testing.assert_array_equal(triplets.valid.numpy(), [False, True, True, True])
    assert triplets.positives.numpy()[0] == 0 and triplets.negatives.numpy()[0] == 0
    single_class = DistanceWeightedMiner(seed=0)(x, np.zeros(4, "int32"))
    assert not single_class.valid.numpy().any()


def test_same_seed_reproduces_draws():
    embeddings, labels = _fixture_batch()
    first = _draw(DistanceWeightedMiner(seed=11), embeddings, labels, 20)[1]
    second = _draw(DistanceWeightedMiner(seed=11), embeddings, labels, 20)[1]
    other = _draw(DistanceWeightedMiner(seed=12), embeddings, labels, 20)[1]
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_high_dimension_is_stable():
    # n = 170 (the paper's group size): raw weights overflow float32 without the max shift.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 170)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1] = x[0]  # a negative at distance 0 (clamped to 0.5)
    labels = np.array([0, 1, 0, 1, 2, 2, 3, 3])
    logits, has_negative = DistanceWeightedMiner().negative_logits(x, labels)
    finite = np.isfinite(logits.numpy())
    assert has_negative.numpy().all()
    assert finite.sum(axis=1).min() >= 1
    assert np.nanmax(np.where(finite, logits.numpy(), np.nan), axis=1) == pytest.approx(0.0)


def test_bad_cutoffs_raise():
    with pytest.raises(ValueError, match="lower_cutoff"):
        DistanceWeightedMiner(lower_cutoff=0.0)
    with pytest.raises(ValueError, match="upper_cutoff"):
        DistanceWeightedMiner(lower_cutoff=0.5, upper_cutoff=0.4)


def test_stateless_seed_makes_draws_a_pure_function_of_the_seed():
    """The per-step seed path (used for exact resume): same seed, same triplets, whatever the
    generator state; another seed, other triplets."""
    import tensorflow as tf

    from dgml_tf.miners import DistanceWeightedMiner

    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 8)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(16), 4)
    seed = tf.constant([7, 11], tf.int64)
    first = DistanceWeightedMiner(seed=1)(x, labels, seed=seed)
    other_miner = DistanceWeightedMiner(seed=99)
    other_miner(x, labels)  # advance its own generator: must not matter
    second = other_miner(x, labels, seed=seed)
    np.testing.assert_array_equal(first.negatives.numpy(), second.negatives.numpy())
    np.testing.assert_array_equal(first.positives.numpy(), second.positives.numpy())
    third = DistanceWeightedMiner(seed=1)(x, labels, seed=tf.constant([7, 12], tf.int64))
    assert not np.array_equal(first.negatives.numpy(), third.negatives.numpy())
    # same-class samples are never negatives on this path either
    assert np.all(labels[first.negatives.numpy()] != labels)


def test_seeded_draws_follow_the_weights_and_compile_with_xla():
    """The Gumbel-max draw has the categorical law of the closed-form weights; it runs under XLA
    (StatelessMultinomial has no XLA kernel, so jit_compile training needs this path)."""
    import tensorflow as tf

    from dgml_tf.miners import DistanceWeightedMiner

    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 2, 3, 4])
    miner = DistanceWeightedMiner(seed=0)
    logits, _ = miner.negative_logits(x, labels)
    expected = tf.nn.softmax(logits[0]).numpy()

    @tf.function(jit_compile=True)
    def draw(seed):
        return miner(x, labels, seed=seed).negatives[0]

    draws = 3000
    counts = np.bincount([int(draw(tf.constant([s, 1], tf.int64))) for s in range(draws)],
                         minlength=6)
    assert counts[0] == counts[1] == 0  # the anchor itself and its same-class sample
    observed, wanted = counts[2:], expected[2:] * draws
    chi2 = float(np.sum((observed - wanted) ** 2 / wanted))
    assert chi2 < 16.27  # 99.9% quantile of chi-square with 3 degrees of freedom
