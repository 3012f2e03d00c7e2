"""Tests of dgml_tf.distances against closed forms, brute-force sorts and tf.math.top_k."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgml_tf.distances import (
    cosine_similarity_matrix,
    l2_normalize,
    l2_normalize_np,
    safe_sqrt,
    squared_euclidean,
    top_k_np,
    unit_squared_distance_matrix,
)


def _stable_top_k(scores, k):
    """Brute force: a stable sort of the negated scores keeps lower indices first among ties."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("seed", range(4))
def test_top_k_equals_stable_sort_and_tf_top_k_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        k = int(rng.integers(1, cols + 1))
        # Few distinct values: ties everywhere, including at the k-th place.
        scores = rng.integers(-2, 3, size=(rows, cols)).astype("float32")
        scores[:, 0] = -np.inf if seed % 2 else scores[:, 0]
        indices, values = top_k_np(scores, k)
        expected_indices, expected_values = _stable_top_k(scores, k)
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_array_equal(values, expected_values)
        assert indices.dtype == np.int64
        top = tf.math.top_k(scores, k=k, sorted=True)
        np.testing.assert_array_equal(indices, top.indices.numpy())


def test_top_k_keeps_lowest_indices_among_boundary_ties():
    scores = np.array([[0.0, 5.0, 1.0, 1.0, 1.0, 1.0, 2.0]], "float32")
    indices, values = top_k_np(scores, 4)
    assert indices.tolist() == [[1, 6, 2, 3]]
    assert values.tolist() == [[5.0, 2.0, 1.0, 1.0]]


def test_top_k_rejects_bad_k_and_shapes():
    with pytest.raises(ValueError, match="k must be between 1 and the number of items 3"):
        top_k_np(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="k must be between"):
        top_k_np(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match=r"\(num_queries, num_items\)"):
        top_k_np(np.zeros(3), 1)


def test_l2_normalize_closed_forms_for_both_clamps():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]], "float32")
    inverse = keras.ops.convert_to_numpy(l2_normalize(x))
    squared = keras.ops.convert_to_numpy(l2_normalize(x, clamp="squared_norm"))
    np.testing.assert_allclose(inverse[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(squared[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(inverse[1], [0.0, 0.0])  # zero vectors stay zero
    np.testing.assert_array_equal(squared[1], [0.0, 0.0])
    # Norm 1e-8: above eps = 1e-12, so "inverse_norm" normalises it; below sqrt(eps) = 1e-6,
    # so "squared_norm" scales by 1/sqrt(eps) = 1e6 only.
    np.testing.assert_allclose(inverse[2], [1.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(squared[2], [1e-2, 0.0], rtol=1e-5)
    with pytest.raises(ValueError, match="clamp must be one of"):
        l2_normalize(x, clamp="max")


def test_l2_normalize_computes_in_float32_and_casts_back():
    x = keras.ops.cast(np.random.default_rng(0).normal(size=(4, 170)), "float16")
    unit = l2_normalize(x, clamp="squared_norm", compute_dtype="float32")
    assert keras.backend.standardize_dtype(unit.dtype) == "float16"
    norms = np.linalg.norm(keras.ops.convert_to_numpy(unit).astype("float32"), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    as32 = l2_normalize(x, compute_dtype="float32", output_dtype="float32")
    assert keras.backend.standardize_dtype(as32.dtype) == "float32"


def test_l2_normalize_np_epsilon_and_dtype():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]])
    unit = l2_normalize_np(x)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(unit[1], [0.0, 0.0])
    np.testing.assert_allclose(unit[2], [0.1, 0.0], rtol=1e-5)  # norm floored at 1e-12
    exact = l2_normalize_np(x[[0, 2]], epsilon=0.0, dtype=None)
    assert exact.dtype == np.float64
    np.testing.assert_array_equal(exact[1], [1.0, 0.0])
    np.testing.assert_allclose(l2_normalize_np(x.T, axis=0)[:, 0], [0.6, 0.8], rtol=1e-6)


def test_pairwise_matrices_closed_forms():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 7)).astype("float32")
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cosine_similarity_matrix(unit)),
                               unit @ unit.T, atol=1e-6)
    brute = ((unit[:, None] - unit[None]) ** 2).sum(-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(unit_squared_distance_matrix(unit)),
                               brute, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(squared_euclidean(unit, unit[::-1])),
                               ((unit - unit[::-1]) ** 2).sum(-1), atol=1e-6)


def test_safe_sqrt_has_a_finite_gradient_at_zero():
    x = tf.constant([0.0, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = safe_sqrt(x)
    gradient = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(y.numpy(), [1e-6, 2.0], rtol=1e-6)
    assert np.all(np.isfinite(gradient)) and gradient[0] == 0.0 and gradient[1] == 0.25


def test_importing_distances_imports_neither_keras_nor_tensorflow():
    code = ("import sys, dgml_tf.distances, dgml_tf.index.exact_index; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
