"""Tests of dgml_tf.layers.AttentiveGrouping and flatten_groups against independent expectations."""

import keras
import numpy as np
import pytest

from backend_checks.numpy_reference import (
    reference_attentive_grouping as _reference_attentive_grouping,
)
from dgml_tf.layers import AttentiveGrouping, FlattenGroups, flatten_groups
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "shape, num_groups, group_dim, layer_kwargs",
    [
        ((2, 5, 5, 16), 3, 8, {"reduction": 4}),
        ((3, 4, 7, 12), 1, 5, {"key_dim": 3}),
        ((1, 6, 2, 8), 4, 6, {"reduction": 8, "projection": True}),
        ((2, 3, 3, 10), 2, 4, {"key_dim": 5, "normalize": False}),
        ((2, 2, 5, 9), 3, 7, {"key_dim": 4, "projection": True, "normalize": False}),
    ],
)
def test_matches_numpy_restatement(shape, num_groups, group_dim, layer_kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    layer = AttentiveGrouping(num_groups=num_groups, group_dim=group_dim,
                              return_attention=True, **layer_kwargs)
    groups, attention = layer(x)
    channels = shape[-1]
    expected_key_dim = layer_kwargs.get("key_dim") or channels // layer_kwargs["reduction"]
    assert tuple(layer.key_kernel.shape) == (channels, expected_key_dim)
    assert tuple(layer.value_kernel.shape) == (channels, group_dim)
    assert tuple(layer.queries.shape) == (num_groups, expected_key_dim)
    # Larger queries give peaky attention, a stronger test of the softmax than the init.
    layer.queries.assign(rng.normal(scale=2.0, size=layer.queries.shape).astype("float32"))
    groups, attention = layer(x)
    projection_kernel = None
    if layer_kwargs.get("projection"):
        assert tuple(layer.projection_kernel.shape) == (group_dim, group_dim)
        projection_kernel = layer.projection_kernel.numpy()
    else:
        assert not hasattr(layer, "projection_kernel")
    expected_groups, expected_attention = _reference_attentive_grouping(
        x, layer.key_kernel.numpy(), layer.value_kernel.numpy(), layer.queries.numpy(),
        projection_kernel, normalize=layer_kwargs.get("normalize", True))
    assert groups.shape == (shape[0], num_groups, group_dim)
    assert attention.shape == (shape[0], num_groups, shape[1], shape[2])
    np.testing.assert_allclose(groups.numpy(), expected_groups, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(attention.numpy(), expected_attention, atol=1e-5, rtol=1e-5)
    assert len(layer.weights) == (4 if layer_kwargs.get("projection") else 3)


def test_attention_sums_to_one_and_unit_norms():
    x = np.random.default_rng(1).normal(size=(3, 4, 6, 16)).astype("float32")
    groups, attention = AttentiveGrouping(3, 8, reduction=4, return_attention=True)(x)
    np.testing.assert_allclose(attention.numpy().sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert np.all(attention.numpy() >= 0)
    np.testing.assert_allclose(np.linalg.norm(groups.numpy(), axis=-1), 1.0, atol=1e-5)
    flat = flatten_groups(groups).numpy()
    assert flat.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=-1), np.sqrt(3), atol=1e-5)
    # Concatenation in group order: group k occupies columns k*d:(k+1)*d.
    np.testing.assert_array_equal(flat[:, 8:16], groups.numpy()[:, 1])


def _permute_positions(x, permutation):
    batch, height, width, channels = x.shape
    flat = x.reshape(batch, height * width, channels)[:, permutation]
    return flat.reshape(batch, height, width, channels)


def test_permutation_and_shift_invariance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 4, 12)).astype("float32")
    layer = AttentiveGrouping(3, 6, reduction=3, return_attention=True)
    groups, attention = (t.numpy() for t in layer(x))

    permutation = rng.permutation(20)
    permuted = _permute_positions(x, permutation)
    permuted_groups, permuted_attention = (t.numpy() for t in layer(permuted))
    np.testing.assert_allclose(permuted_groups, groups, atol=1e-5)
    expected_attention = attention.reshape(2, 3, 20)[:, :, permutation].reshape(2, 3, 5, 4)
    np.testing.assert_allclose(permuted_attention, expected_attention, atol=1e-6)

    shifted = np.roll(x, shift=(2, 1), axis=(1, 2))
    shifted_groups, shifted_attention = (t.numpy() for t in layer(shifted))
    np.testing.assert_allclose(shifted_groups, groups, atol=1e-5)
    np.testing.assert_allclose(shifted_attention, np.roll(attention, (2, 1), axis=(2, 3)),
                               atol=1e-6)


def test_flatten_dense_head_is_not_shift_invariant():
    """The same check fails for a position-aware head, so the invariance test can fail."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4, 12)).astype("float32")
    head = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(6, use_bias=False)])
    shifted = np.roll(x, shift=(2, 1), axis=(1, 2))
    difference = np.abs(head(shifted).numpy() - head(x).numpy()).max()
    assert difference > 1e-2


def test_unknown_spatial_size_and_shapes():
    inputs = keras.Input((None, None, 16))
    groups, attention = AttentiveGrouping(2, 5, reduction=4, return_attention=True)(inputs)
    assert tuple(groups.shape) == (None, 2, 5)
    assert tuple(attention.shape) == (None, 2, None, None)
    assert attention.dtype == "float32"
    model = keras.Model(inputs, [groups, attention])
    for h, w in ((3, 3), (5, 2)):
        out_groups, out_attention = model(np.ones((1, h, w, 16), "float32"))
        assert out_groups.shape == (1, 2, 5) and out_attention.shape == (1, 2, h, w)
    assert AttentiveGrouping(2, 5, key_dim=3).compute_output_shape((4, 3, 3, 8)) == (4, 2, 5)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        AttentiveGrouping(num_groups=0)
    with pytest.raises(ValueError, match="pass key_dim explicitly"):
        AttentiveGrouping(2, 4, reduction=8)(np.ones((1, 2, 2, 3), "float32"))
    with pytest.raises(ValueError):
        AttentiveGrouping(2, 4, reduction=1)(np.ones((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, K, d\)"):
        flatten_groups(np.ones((2, 3), "float32"))


class _SumOfSquares(keras.regularizers.Regularizer):
    """Test regularizer with a closed form: sum of squares of what it is given."""

    def __call__(self, x):
        return keras.ops.sum(keras.ops.square(keras.ops.cast(x, "float32")))


def test_activity_regularizer_sees_only_group_embeddings():
    x = np.random.default_rng(4).normal(size=(4, 3, 3, 8)).astype("float32")
    layer = AttentiveGrouping(3, 5, key_dim=4, return_attention=True,
                              activity_regularizer=_SumOfSquares())
    groups, _ = layer(x)
    # Unit groups: sum of squares = B * K = 12, divided by the batch size (Keras' convention).
    # Were the attention maps included, the sum of their squares would add to it.
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), 3.0, rtol=1e-5)
    assert layer.activity_regularizer is None  # Keras' own all-outputs path stays off.

    inputs = keras.Input((3, 3, 8))
    g, a = AttentiveGrouping(3, 5, key_dim=4, return_attention=True,
                             activity_regularizer=_SumOfSquares())(inputs)
    model = keras.Model(inputs, {"g": g, "a": a})
    model(x)
    np.testing.assert_allclose(float(sum(model.losses)), 3.0, rtol=1e-5)


def test_get_config_round_trip():
    layer = AttentiveGrouping(num_groups=4, group_dim=6, reduction=2, key_dim=5, projection=True,
                              normalize=False, return_attention=True,
                              kernel_regularizer=keras.regularizers.L2(1e-3),
                              queries_initializer=keras.initializers.RandomNormal(stddev=0.5),
                              activity_regularizer=keras.regularizers.L1(0.1), name="ag")
    config = layer.get_config()
    clone = AttentiveGrouping.from_config(config)
    assert clone.get_config() == config
    assert (clone.num_groups, clone.group_dim, clone.key_dim, clone.projection,
            clone.normalize, clone.return_attention) == (4, 6, 5, True, False, True)
    assert isinstance(clone.group_activity_regularizer, keras.regularizers.L1)
    assert clone.queries_initializer.stddev == 0.5
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(revived, AttentiveGrouping)


def test_keras_save_load_identical_outputs(tmp_path):
    inputs = keras.Input((4, 4, 8))
    groups, attention = AttentiveGrouping(3, 5, key_dim=4, projection=True,
                                          return_attention=True)(inputs)
    model = keras.Model(inputs, {"embedding": flatten_groups(groups), "attention": attention})
    x = np.random.default_rng(5).normal(size=(2, 4, 4, 8)).astype("float32")
    expected = model(x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = loaded(x)
    for key in ("embedding", "attention"):
        np.testing.assert_array_equal(actual[key].numpy(), expected[key].numpy())
    assert any(isinstance(layer, FlattenGroups) for layer in loaded.layers)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    layer = AttentiveGrouping(3, 6, reduction=4, return_attention=True)
    x = np.random.default_rng(6).normal(size=(2, 5, 5, 16)).astype("float32")
    groups, attention = layer(x)
    assert layer.key_kernel.dtype == "float32"  # variables stay float32
    assert attention.dtype == "float32"
    assert groups.dtype == layer.compute_dtype
    assert np.all(np.isfinite(groups.numpy().astype("float32")))
    np.testing.assert_allclose(attention.numpy().sum(axis=(2, 3)), 1.0, atol=1e-5)
    norms = np.linalg.norm(groups.numpy().astype("float32"), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-2)


def _tiny_grouping_model():
    inputs = keras.Input((4, 4, 8))
    groups = AttentiveGrouping(2, 3, key_dim=4)(inputs)
    return keras.Model(inputs, flatten_groups(groups))


def _fit_once(model):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 4, 4, 8)).astype("float32")
    y = rng.normal(size=(8, 6)).astype("float32")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = [w.numpy() for w in model.trainable_weights]
    assert np.isfinite(history.history["loss"][0])
    assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))


def test_fit_graph_mode():
    model = _tiny_grouping_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=False,
                  jit_compile=False)
    _fit_once(model)


def test_fit_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = _tiny_grouping_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    assert strategy.num_replicas_in_sync == 2
    _fit_once(model)


@pytest.mark.parametrize(
    "init_kwargs, input_shape, expected_shape, num_weights",
    [
        ({"num_groups": 3, "group_dim": 8, "reduction": 4}, (2, 5, 5, 16), (2, 3, 8), 3),
        ({"num_groups": 2, "group_dim": 5, "key_dim": 4, "projection": True,
          "return_attention": True}, (2, 4, 4, 8), ((2, 2, 5), (2, 2, 4, 4)), 4),
        ({"num_groups": 1, "group_dim": 5, "key_dim": 3, "normalize": False}, (3, 4, 7, 12),
         (3, 1, 5), 3),
    ],
)
def test_attentive_grouping_standard_layer_checks(init_kwargs, input_shape, expected_shape,
                                                  num_weights):
    x = np.random.default_rng(8).normal(size=input_shape).astype("float32")
    # Attention maps are computed and returned in float32 under any policy (by design).
    run_layer_test(AttentiveGrouping, init_kwargs, x, expected_shape,
                   expected_num_trainable_weights=num_weights,
                   expected_num_non_trainable_weights=0,
                   float32_outputs=(1,) if init_kwargs.get("return_attention") else ())


def test_flatten_groups_standard_layer_checks():
    x = np.random.default_rng(9).normal(size=(2, 3, 4)).astype("float32")
    run_layer_test(FlattenGroups, {}, x, (2, 12), expected_num_trainable_weights=0,
                   expected_num_non_trainable_weights=0)
