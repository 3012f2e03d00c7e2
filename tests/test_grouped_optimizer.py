"""Parameter-group optimizers against NumPy re-statements of (PyTorch-form) Adam/AdamW."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dgml_tf.train import (
    CoupledWeightDecayAdam,
    GroupConfig,
    GroupedOptimizer,
    StepSchedule,
    build_grouped_optimizer,
)

B1, B2, EPS = 0.9, 0.999, 1e-8


def numpy_adam(w, grads, lrs, l2=0.0, decoupled_wd=0.0):
    """PyTorch's Adam / AdamW: bias-corrected moments, coupled L2 or decoupled decay."""
    w = np.array(w, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.asarray(g, np.float64) + l2 * w
        w = w - lr * decoupled_wd * w
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + EPS)
    return w


W_A = np.array([0.5, -1.0, 2.0], "float32")
W_B = np.array([[1.5, -0.5], [0.25, 3.0]], "float32")
G_A = [np.array([0.3, -0.2, 0.1], "float32"), np.array([-0.1, 0.4, 0.2], "float32")]
G_B = [np.array([[0.05, 1.0], [-2.0, 0.5]], "float32"), np.array([[0.3, -0.7], [1.0, 0.2]], "float32")]


def make(groups, steps_per_epoch=10):
    a = keras.Variable(W_A, name="a")
    b = keras.Variable(W_B, name="b")
    optimizer = build_grouped_optimizer(
        None, groups, steps_per_epoch=steps_per_epoch, variable_groups={"x": [a], "y": [b]}
    )
    return optimizer, a, b


@pytest.mark.parametrize("steps", [1, 2])
def test_two_groups_with_their_own_learning_rates_match_adam(steps):
    optimizer, a, b = make({"x": GroupConfig(0.1), "y": GroupConfig(0.01)})
    for t in range(steps):
        optimizer.apply([G_A[t], G_B[t]], [a, b])
    np.testing.assert_allclose(a.numpy(), numpy_adam(W_A, G_A[:steps], [0.1] * steps), rtol=1e-5)
    np.testing.assert_allclose(b.numpy(), numpy_adam(W_B, G_B[:steps], [0.01] * steps), rtol=1e-5)
    assert int(optimizer.iterations) == steps
    assert {g: float(lr) for g, lr in optimizer.learning_rates().items()} == pytest.approx(
        {"x": 0.1, "y": 0.01}
    )


def test_coupled_and_decoupled_weight_decay_closed_forms():
    optimizer, a, b = make(
        {"x": GroupConfig(0.1, weight_decay=0.5), "y": GroupConfig(0.1, 0.5, decoupled=True)}
    )
    assert isinstance(optimizer.groups["x"], CoupledWeightDecayAdam)
    assert isinstance(optimizer.groups["y"], keras.optimizers.AdamW)
    for t in range(2):
        optimizer.apply([G_A[t], G_B[t]], [a, b])
    np.testing.assert_allclose(a.numpy(), numpy_adam(W_A, G_A, [0.1] * 2, l2=0.5), rtol=1e-5)
    np.testing.assert_allclose(
        b.numpy(), numpy_adam(W_B, G_B, [0.1] * 2, decoupled_wd=0.5), rtol=1e-5
    )
    # The two forms really differ (the test would not notice a swap otherwise).
    assert not np.allclose(
        numpy_adam(W_A, G_A, [0.1] * 2, l2=0.5), numpy_adam(W_A, G_A, [0.1] * 2, decoupled_wd=0.5)
    )


def test_loss_group_gets_its_own_rate_and_no_decay():
    optimizer, a, b = make(
        {"x": GroupConfig(1e-5, weight_decay=3e-3), "y": GroupConfig(5e-5)}  # y: margin betas
    )
    # Zero gradients: only weight decay can move a variable.
    optimizer.apply([np.zeros_like(W_A), np.zeros_like(W_B)], [a, b])
    np.testing.assert_array_equal(b.numpy(), W_B)
    np.testing.assert_allclose(a.numpy(), numpy_adam(W_A, [0 * W_A], [1e-5], l2=3e-3), rtol=1e-6)
    assert not np.array_equal(a.numpy(), W_A)
    # Its own rate: the first non-zero Adam step moves each beta by lr * g / (|g| + eps).
    optimizer, a, b = make({"x": GroupConfig(1e-5, 3e-3), "y": GroupConfig(5e-5)})
    optimizer.apply([G_A[0], G_B[0]], [a, b])
    np.testing.assert_allclose(W_B - b.numpy(), 5e-5 * np.sign(G_B[0]), atol=3e-7)


def test_step_schedule_switches_at_the_boundary():
    schedule = StepSchedule(boundaries_epochs=(1, 3), factor=0.1)
    optimizer, a, b = make(
        {"x": GroupConfig(0.1, schedule=schedule), "y": GroupConfig(0.2)}, steps_per_epoch=2
    )
    expected = [0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001]  # epochs 0 | 1, 2 | 3
    seen = []
    grads_a = [G_A[t % 2] for t in range(len(expected))]
    for t in range(len(expected)):
        seen.append(float(optimizer.learning_rates()["x"]))
        assert float(optimizer.learning_rates()["y"]) == pytest.approx(0.2)
        optimizer.apply([grads_a[t], G_B[t % 2]], [a, b])
    assert seen == pytest.approx(expected)
    np.testing.assert_allclose(a.numpy(), numpy_adam(W_A, grads_a, expected), rtol=1e-5)


def _regression_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="out")(hidden)
    return keras.Model(inputs, outputs)


def _compiled(model):
    optimizer = build_grouped_optimizer(
        None,
        {"backbone": GroupConfig(1e-2, 1e-2), "head": GroupConfig(3e-2, 1e-2, decoupled=True)},
        steps_per_epoch=5,
        variable_groups={
            "backbone": model.get_layer("hidden").trainable_variables,
            "head": model.get_layer("out").trainable_variables,
        },
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_state_survives_save_weights_and_keras_file(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    model = _compiled(_regression_model())
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 2 steps: moments are non-zero
    model.save_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "m.keras")

    restored = _compiled(_regression_model())
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(tmp_path / "w.weights.h5")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, GroupedOptimizer)
    assert loaded.optimizer.variable_groups == model.optimizer.variable_groups
    for other in (restored, loaded):
        assert int(other.optimizer.iterations) == 2
        for group in ("backbone", "head"):
            assert int(other.optimizer.groups[group].iterations) == 2
    for m in (model, restored, loaded):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for other in (restored, loaded):
        for w, w_other in zip(model.get_weights(), other.get_weights()):
            np.testing.assert_allclose(w_other, w, rtol=1e-6)


def test_errors_name_the_problem():
    a, b = keras.Variable(W_A, name="a"), keras.Variable(W_B, name="b")
    with pytest.raises(ValueError, match="Unknown parameter group 'queriess'"):
        build_grouped_optimizer(None, {"queriess": GroupConfig(1.0)}, 1, {"queries": [a]})
    with pytest.raises(ValueError, match=r"\['y'\] have trainable variables but no GroupConfig"):
        build_grouped_optimizer(None, {"x": GroupConfig(1.0)}, 1, {"x": [a], "y": [b]})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_grouped_optimizer(None, {"x": GroupConfig(1.0)}, 0, {"x": [a]})
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        GroupConfig(0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        StepSchedule((3, 2))
    with pytest.raises(ValueError, match="plain keras Optimizer"):
        GroupedOptimizer({"x": "adam"})
    optimizer = GroupedOptimizer({"x": keras.optimizers.Adam(0.1)}, {a.path: "x"})
    with pytest.raises(ValueError, match="belongs to no parameter group"):
        optimizer.apply([G_A[0], G_B[0]], [a, b])
    with pytest.raises(ValueError, match="in two parameter groups"):
        GroupedOptimizer({"x": keras.optimizers.Adam(0.1), "y": keras.optimizers.Adam(0.1)}).assign(
            {"x": [a], "y": [a]}
        )
