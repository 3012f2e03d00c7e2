"""Tests of the baseline heads against NumPy global-average-pooling + matmul."""

import keras
import numpy as np
import pytest

from dgml_tf.layers import ConventionalGroupingHead, SingleEmbeddingHead, flatten_groups
from layer_test_case import run_layer_test


def _normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_single_embedding_head_closed_form():
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype("float32")
    head = SingleEmbeddingHead(7)
    out = head(x).numpy()
    assert out.shape == (3, 1, 7)
    assert [w.name for w in head.weights] == ["kernel"]  # bias-free
    expected = _normalize(x.astype(np.float64).mean(axis=(1, 2)) @ head.kernel.numpy())
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(flatten_groups(out).numpy(), axis=-1), 1.0, atol=1e-5)
    raw = SingleEmbeddingHead(7, normalize=False)
    np.testing.assert_allclose(raw(x).numpy()[:, 0],
                               x.astype(np.float64).mean(axis=(1, 2)) @ raw.kernel.numpy(),
                               atol=1e-5)


def test_conventional_grouping_head_closed_form():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 8)).astype("float32")
    head = ConventionalGroupingHead(num_groups=3, group_dim=4)
    out = head(x).numpy()
    assert out.shape == (2, 3, 4)
    assert tuple(head.kernel.shape) == (8, 12) and len(head.weights) == 1
    linear = x.astype(np.float64).mean(axis=(1, 2)) @ head.kernel.numpy()  # (B, 12)
    expected = _normalize(linear.reshape(2, 3, 4))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(flatten_groups(out).numpy(), axis=-1), np.sqrt(3),
                               atol=1e-5)


@pytest.mark.parametrize("head", [SingleEmbeddingHead(5, name="s"),
                                  ConventionalGroupingHead(2, 3, name="c")])
def test_heads_config_round_trip_and_save(head, tmp_path):
    config = head.get_config()
    assert type(head).from_config(config).get_config() == config
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, head(inputs))
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 4)).astype("float32")
    model.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_heads_reject_bad_sizes():
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        SingleEmbeddingHead(0)
    with pytest.raises(ValueError, match="group_dim must be a positive integer"):
        ConventionalGroupingHead(3, -1)


def test_heads_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 8)).astype("float32")
    for head in (SingleEmbeddingHead(6), ConventionalGroupingHead(2, 3)):
        out = head(x).numpy().astype("float32")
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=2e-2)


@pytest.mark.parametrize(
    "head_cls, init_kwargs, expected_shape",
    [
        (SingleEmbeddingHead, {"embedding_dim": 7}, (3, 1, 7)),
        (SingleEmbeddingHead, {"embedding_dim": 5, "normalize": False}, (3, 1, 5)),
        (ConventionalGroupingHead, {"num_groups": 3, "group_dim": 4}, (3, 3, 4)),
        (ConventionalGroupingHead, {"num_groups": 2, "group_dim": 3, "normalize": False},
         (3, 2, 3)),
    ],
)
def test_heads_standard_layer_checks(head_cls, init_kwargs, expected_shape):
    x = np.random.default_rng(4).normal(size=(3, 4, 5, 6)).astype("float32")
    run_layer_test(head_cls, init_kwargs, x, expected_shape, expected_num_trainable_weights=1,
                   expected_num_non_trainable_weights=0)
