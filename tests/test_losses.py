"""Losses against closed forms and NumPy re-statements; Keras integration (fit, config)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from backend_checks.numpy_reference import (
    forced_margin_batch as _forced_margin_batch,
    groups_with_pairwise_cosine_half as _groups_with_pairwise_cosine_half,
    np_binomial_deviance,
    np_contrastive,
    np_diversity,
    np_margin,
    np_softplus,
    np_unit,
)
from dgml_tf.losses import (
    BinomialDevianceLoss,
    ClassBetas,
    ContrastiveLoss,
    DiversityLoss,
    DiversityRegularizer,
    MarginLoss,
    PerGroupLoss,
    diversity_loss,
)
from layer_test_case import run_layer_test


# ---------------------------------------------------------------- diversity


def test_diversity_closed_forms_for_three_groups():
    identical = np.ones((4, 3, 5), np.float32)
    orthogonal = np.tile(np.eye(5, dtype=np.float32)[None, :3], (4, 1, 1))
    assert float(diversity_loss(identical)) == pytest.approx(3 * np_softplus(25.0) / 2, rel=1e-6)
    assert float(diversity_loss(identical)) == pytest.approx(37.5, abs=1e-4)
    assert float(diversity_loss(orthogonal)) == pytest.approx(3 * np_softplus(-25.0) / 2, rel=1e-3)
    half = _groups_with_pairwise_cosine_half()
    assert float(diversity_loss(half)) == pytest.approx(3 * np.log(2) / 2, rel=1e-5)


def test_diversity_normalises_internally_and_matches_numpy():
    scales = np.array([3.0, 0.2, 7.0], np.float32)[None, :, None]
    half = _groups_with_pairwise_cosine_half() * scales
    assert float(diversity_loss(half)) == pytest.approx(3 * np.log(2) / 2, rel=1e-5)
    x = np.random.default_rng(0).normal(size=(5, 4, 6)).astype(np.float32)
    x[:, 1] = x[:, 0] + 0.3 * x[:, 1]  # some cosines near the 0.5 threshold
    assert float(diversity_loss(x, beta1=1.5, beta2=0.3, scale=10.0)) == pytest.approx(
        np_diversity(x, 1.5, 0.3, 10.0), rel=1e-4
    )


def test_diversity_is_zero_for_one_group_and_rejects_flat_embeddings():
    assert float(diversity_loss(np.random.rand(3, 1, 4).astype(np.float32))) == 0.0
    with pytest.raises(ValueError, match=r"\(batch, K, d\)"):
        diversity_loss(np.ones((3, 12), np.float32))


def test_diversity_float16_input_computes_in_float32():
    x = np.random.default_rng(1).normal(size=(4, 3, 8)).astype(np.float16)
    value = diversity_loss(tf.constant(x))
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(np_diversity(x.astype(np.float64)), rel=1e-2)


def test_diversity_gradients_are_finite_even_for_identical_groups():
    for x in (np.ones((2, 3, 4), np.float32), np.random.rand(2, 3, 4).astype(np.float32)):
        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = diversity_loss(variable)
        assert np.isfinite(tape.gradient(value, variable).numpy()).all()


def test_sgd_on_diversity_lowers_mean_pairwise_cosine():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(4, 1, 8))
    variable = tf.Variable((base + 0.3 * rng.normal(size=(4, 3, 8))).astype(np.float32))

    def mean_cosine():
        unit = np_unit(variable.numpy())
        pairs = ((0, 1), (0, 2), (1, 2))
        return np.mean([(unit[:, i] * unit[:, j]).sum(-1).mean() for i, j in pairs])

    before = mean_cosine()
    optimizer = keras.optimizers.SGD(learning_rate=0.05)
    for _ in range(10):
        with tf.GradientTape() as tape:
            value = diversity_loss(variable)
        optimizer.apply_gradients([(tape.gradient(value, variable), variable)])
    assert before > 0.8
    assert mean_cosine() < before - 0.1


def test_diversity_loss_class_ignores_labels_and_round_trips():
    loss = DiversityLoss(beta1=1.0, beta2=0.2, scale=5.0)
    x = np.random.default_rng(3).normal(size=(3, 3, 4)).astype(np.float32)
    assert float(loss(np.zeros(3), x)) == pytest.approx(np_diversity(x, 1.0, 0.2, 5.0), rel=1e-4)
    assert float(loss(None, x)) == pytest.approx(np_diversity(x, 1.0, 0.2, 5.0), rel=1e-4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(clone, DiversityLoss) and clone.get_config() == loss.get_config()


# ------------------------------------------------------------- regularizer


def _dense_grouping_model(weight):
    inputs = keras.Input((6,))
    flat = keras.layers.Dense(12, name="dense")(inputs)
    groups = keras.layers.Reshape(
        (3, 4), activity_regularizer=DiversityRegularizer(weight), name="groups"
    )(flat)
    return keras.Model(inputs, groups)


@pytest.mark.parametrize("batch_size", [2, 8])
def test_regularizer_adds_weight_times_diversity_for_any_batch_size(batch_size):
    model = _dense_grouping_model(0.02)
    x = np.random.default_rng(batch_size).normal(size=(batch_size, 6)).astype(np.float32)
    groups = model(x)
    assert len(model.losses) == 1
    assert float(model.losses[0]) == pytest.approx(0.02 * np_diversity(groups.numpy()), rel=1e-5)


def test_fit_reported_loss_includes_the_regularizer():
    model = _dense_grouping_model(0.5)
    x = np.random.default_rng(4).normal(size=(8, 6)).astype(np.float32)
    targets = model.predict(x, verbose=0)
    expected = 0.5 * np_diversity(targets)
    # lr 0: weights stay put, so the reported loss is MSE (0) + the regularization term.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    history = model.fit(x, targets, batch_size=8, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-4)


def test_regularizer_on_attentive_grouping():
    from dgml_tf.layers import AttentiveGrouping

    layer = AttentiveGrouping(
        num_groups=3, group_dim=4, reduction=2, return_attention=True,
        activity_regularizer=DiversityRegularizer(0.03),
    )
    for batch_size in (2, 5):
        features = np.random.default_rng(batch_size).normal(size=(batch_size, 3, 3, 8))
        groups, _ = layer(features.astype(np.float32))
        assert float(layer.losses[-1]) == pytest.approx(
            0.03 * np_diversity(groups.numpy()), rel=1e-5
        )


def test_regularizer_config_and_errors():
    regularizer = keras.regularizers.get(
        keras.regularizers.serialize(DiversityRegularizer(0.01, scale=10.0))
    )
    assert isinstance(regularizer, DiversityRegularizer)
    assert regularizer.get_config() == {"weight": 0.01, "beta1": 2.0, "beta2": 0.5, "scale": 10.0}
    with pytest.raises(ValueError, match="weight"):
        DiversityRegularizer(-1.0)
    with pytest.raises(ValueError, match=r"\(batch, K, d\)"):
        DiversityRegularizer(0.1)(tf.ones((2, 6)))


# ------------------------------------------------------------------ margin


def test_margin_loss_on_forced_triplets_matches_hand_computation():
    x, labels, d_ap, d_an = _forced_margin_batch(100.0)
    loss = MarginLoss(num_classes=2, num_groups=1, seed=0)
    # By hand: class 0 pays relu(1.9696-1.0)+relu(1.4-1.2856), class 1 relu(1.4-1.2856).
    expected = np_margin(d_ap, d_an, beta=1.2)
    assert expected == pytest.approx((2 * (0.96962 + 0.11443) + 2 * 0.11443) / 4, abs=1e-4)
    assert float(loss(labels, x)) == pytest.approx(expected, abs=1e-5)
    assert float(loss(labels, 5.0 * x)) == pytest.approx(expected, abs=1e-5)  # unit vectors
    xla_value = tf.function(loss, jit_compile=True)(tf.constant(labels), tf.constant(x))
    assert float(xla_value) == pytest.approx(expected, abs=1e-5)  # sampling compiles with XLA


def test_margin_loss_uses_class_and_group_betas_and_averages_groups():
    x0, labels, d_ap0, d_an0 = _forced_margin_batch(100.0)
    x1, _, d_ap1, d_an1 = _forced_margin_batch(130.0)
    betas = np.array([[1.2, 0.9], [1.0, 1.5]], np.float32)  # (class, group)
    loss = MarginLoss(num_classes=2, num_groups=2, seed=0)
    loss.betas.assign(betas)
    expected = np.mean([
        np_margin(d_ap0, d_an0, beta=betas[labels, 0]),
        np_margin(d_ap1, d_an1, beta=betas[labels, 1]),
    ])
    grouped = np.stack([x0, x1], axis=1)
    assert float(loss(labels, grouped)) == pytest.approx(expected, abs=1e-5)
    # The concatenated (B, K*d) embedding is split into the same groups.
    assert float(loss(labels, grouped.reshape(4, 4))) == pytest.approx(expected, abs=1e-5)


def test_margin_loss_sum_when_no_active_triplet_and_zero_without_triplets():
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    loss = MarginLoss(num_classes=4, num_groups=1, seed=0)
    assert float(loss(np.array([0, 0, 1, 1]), x)) == 0.0  # d_ap 0, d_an sqrt2: no term active
    assert float(loss(np.array([0, 1, 2, 3]), x)) == 0.0  # no positives: every anchor skipped


def test_margin_betas_train_with_model_fit():
    inputs = keras.Input((5,))
    groups = keras.layers.Reshape((2, 3))(keras.layers.Dense(6)(inputs))
    model = keras.Model(inputs, groups)
    loss = MarginLoss(num_classes=3, num_groups=2, seed=0)
    model.class_betas = loss.class_betas
    assert any(v is loss.betas for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss=loss, jit_compile=False)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    history = model.fit(x, y, batch_size=12, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(loss.betas.numpy(), 1.2)
    assert len(loss.trainable_variables) == 1 and loss.trainable_variables[0] is loss.betas


def test_margin_loss_config_round_trip_and_injection():
    shared = ClassBetas(num_classes=2, num_groups=1, initial_value=1.1)
    loss = MarginLoss(num_classes=2, num_groups=1, margin=0.3, class_betas=shared, seed=4)
    assert loss.betas is shared.betas
    clone = MarginLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert clone.miner.get_config() == loss.miner.get_config()
    x, labels, d_ap, d_an = _forced_margin_batch(100.0)
    clone.betas.assign(np.full((2, 1), 1.1, np.float32))
    assert float(clone(labels, x)) == pytest.approx(np_margin(d_ap, d_an, 1.1, 0.3), abs=1e-5)
    with pytest.raises(ValueError, match="class_betas"):
        MarginLoss(num_classes=3, num_groups=1, class_betas=shared)


# ------------------------------------------------------- pairwise losses


def _random_batch(seed, batch=8, groups=2, dim=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, groups, dim)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3][:batch])
    return x, labels


def test_binomial_deviance_matches_numpy_per_group_average():
    x, labels = _random_batch(6)
    expected = np.mean([np_binomial_deviance(labels, x[:, k], 1.5, 0.4, 10.0) for k in range(2)])
    loss = BinomialDevianceLoss(alpha=1.5, beta=0.4, negative_cost=10.0)
    assert float(loss(labels, x)) == pytest.approx(expected, rel=1e-4)
    assert float(BinomialDevianceLoss()(labels[:, None], x[:, 0])) == pytest.approx(
        np_binomial_deviance(labels, x[:, 0]), rel=1e-4
    )


def test_contrastive_matches_numpy_per_group_average():
    x, labels = _random_batch(7)
    expected = np.mean([np_contrastive(labels, x[:, k], margin=1.2) for k in range(2)])
    assert float(ContrastiveLoss(margin=1.2)(labels, x)) == pytest.approx(expected, rel=1e-4)


def test_per_group_loss_is_the_mean_of_per_group_values():
    x, labels = _random_batch(8, groups=3)
    expected = np.mean([np_contrastive(labels, x[:, k]) for k in range(3)])
    loss = PerGroupLoss(ContrastiveLoss(), num_groups=3)
    assert float(loss(labels, x)) == pytest.approx(expected, rel=1e-4)
    assert float(loss(labels, x.reshape(8, -1))) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "loss",
    [BinomialDevianceLoss(alpha=1.0), ContrastiveLoss(margin=0.7, num_groups=2),
     PerGroupLoss(BinomialDevianceLoss(beta=0.3), num_groups=2, normalize=False)],
    ids=["binomial", "contrastive", "per_group"],
)
def test_pairwise_losses_serialize(loss):
    x, labels = _random_batch(10)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss)
    assert float(clone(labels, x)) == pytest.approx(float(loss(labels, x)), rel=1e-6)


def test_bad_inputs_give_clear_errors():
    loss = ContrastiveLoss(num_groups=2)
    x, labels = _random_batch(11)
    with pytest.raises(ValueError, match="num_groups=2"):
        loss(labels, np.ones((8, 3, 5), np.float32))
    with pytest.raises(ValueError, match="equal groups"):
        loss(labels, np.ones((8, 7), np.float32))
    with pytest.raises(ValueError, match="rank 4"):
        loss(labels, np.ones((8, 2, 5, 1), np.float32))
    with pytest.raises(ValueError, match="One-hot"):
        loss(np.eye(8), x)
    with pytest.raises(ValueError, match="same batch size"):
        loss(labels[:6], x)
    with pytest.raises(TypeError, match="TripletMiner"):
        MarginLoss(num_classes=2, miner=object())


def test_class_betas_standard_layer_checks():
    x = np.random.default_rng(11).normal(size=(4, 3, 5)).astype("float32")
    # The layer passes its input through (the betas feed the loss, not the output), so a fit
    # step on its output cannot move them; MarginLoss's tests train them.
    run_layer_test(ClassBetas, {"num_classes": 6, "num_groups": 3, "initial_value": 0.7}, x,
                   (4, 3, 5), expected_num_trainable_weights=1,
                   expected_num_non_trainable_weights=0, run_training_check=False)
