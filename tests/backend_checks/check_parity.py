"""Parity checks that run on whichever Keras backend this process has (KERAS_BACKEND).

Run by tests/test_backends.py once per backend, each in its own process (Keras fixes the
backend at import). Everything here is ``keras.ops`` / NumPy: no TensorFlow import, so the same
file runs in a TensorFlow-free venv (torch) too. Expectations are the NumPy re-statements and
closed forms of tests/backend_checks/numpy_reference.py. With ``DGML_BACKEND_OUT`` set, the
values that must agree across backends (losses without sampling, the miner's sampling
probabilities, a short fit's loss trajectory, a saved ``.keras`` model's predictions) are written
to ``<out>/<backend>.json`` and compared with those of the backends that ran before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from backend_checks.numpy_reference import (
    closed_form_probabilities,
    forced_margin_batch,
    groups_with_pairwise_cosine_half,
    np_binomial_deviance,
    np_contrastive,
    np_diversity,
    np_margin,
    np_softplus,
    point_at_distance,
    reference_attentive_grouping,
)
from backend_checks.tiny_model import fixed_weights, tiny_batch, tiny_embedding_model
from dgml_tf.layers import (
    AttentiveGrouping,
    ConventionalGroupingHead,
    SingleEmbeddingHead,
    flatten_groups,
)
from dgml_tf.losses import (
    BinomialDevianceLoss,
    ContrastiveLoss,
    DiversityRegularizer,
    MarginLoss,
    PerGroupLoss,
    diversity_loss,
)
from dgml_tf.miners import DistanceWeightedMiner
from dgml_tf.train import MetricLearningModel, step_seed

BACKEND = keras.backend.backend()
BACKEND_ORDER = ("tensorflow", "jax", "torch")
OUT = Path(os.environ["DGML_BACKEND_OUT"]) if os.environ.get("DGML_BACKEND_OUT") else None
RECORD: dict = {}  # name -> list of floats, written by the last test


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def record(name: str, value) -> None:
    RECORD[name] = np.asarray(value, np.float64).ravel().tolist()


@pytest.fixture(autouse=True)
def _clean_keras():
    keras.backend.clear_session()
    yield


# ------------------------------------------------------------------ layer and heads


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
def test_attentive_grouping_matches_numpy(shape, num_groups, group_dim, layer_kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    layer = AttentiveGrouping(num_groups=num_groups, group_dim=group_dim,
                              return_attention=True, **layer_kwargs)
    layer(x)
    layer.queries.assign(rng.normal(scale=2.0, size=layer.queries.shape).astype("float32"))
    groups, attention = layer(x)
    projection = to_numpy(layer.projection_kernel) if layer_kwargs.get("projection") else None
    expected_groups, expected_attention = reference_attentive_grouping(
        x, to_numpy(layer.key_kernel), to_numpy(layer.value_kernel), to_numpy(layer.queries),
        projection, normalize=layer_kwargs.get("normalize", True))
    np.testing.assert_allclose(to_numpy(groups), expected_groups, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(attention), expected_attention, atol=1e-5, rtol=1e-5)


def test_layer_with_fixed_weights_same_on_every_backend():
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype("float32")
    layer = AttentiveGrouping(num_groups=3, group_dim=5, reduction=2, projection=True,
                              return_attention=True)
    layer(x)
    fixed_weights(layer, seed=2, scale=1.0)
    groups, attention = layer(x)
    record("attentive_groups", to_numpy(groups))
    record("attentive_attention", to_numpy(attention))
    np.testing.assert_allclose(np.linalg.norm(to_numpy(flatten_groups(groups)), axis=-1),
                               np.sqrt(3), atol=1e-5)


def test_heads_closed_forms():
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype("float32")
    pooled = x.astype(np.float64).mean(axis=(1, 2))
    single = SingleEmbeddingHead(7)
    out = to_numpy(single(x))
    expected = pooled @ to_numpy(single.kernel)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-5)
    grouping = ConventionalGroupingHead(num_groups=3, group_dim=2)
    out = to_numpy(grouping(x))
    linear = (pooled @ to_numpy(grouping.kernel)).reshape(3, 3, 2)
    np.testing.assert_allclose(out, linear / np.linalg.norm(linear, axis=-1, keepdims=True),
                               atol=1e-5)


# ------------------------------------------------------------------------- losses


def test_diversity_closed_forms_and_numpy():
    identical = np.ones((4, 3, 5), np.float32)
    orthogonal = np.tile(np.eye(5, dtype=np.float32)[None, :3], (4, 1, 1))
    assert float(diversity_loss(identical)) == pytest.approx(3 * np_softplus(25.0) / 2, rel=1e-6)
    assert float(diversity_loss(orthogonal)) == pytest.approx(3 * np_softplus(-25.0) / 2,
                                                              rel=1e-3)
    half = groups_with_pairwise_cosine_half()
    assert float(diversity_loss(half)) == pytest.approx(3 * np.log(2) / 2, rel=1e-5)
    x = np.random.default_rng(0).normal(size=(5, 4, 6)).astype(np.float32)
    x[:, 1] = x[:, 0] + 0.3 * x[:, 1]
    value = float(diversity_loss(x, beta1=1.5, beta2=0.3, scale=10.0))
    assert value == pytest.approx(np_diversity(x, 1.5, 0.3, 10.0), rel=1e-4)
    record("diversity", value)


def test_diversity_regularizer_is_weight_times_diversity():
    x = np.random.default_rng(3).normal(size=(6, 3, 4)).astype(np.float32)
    value = float(DiversityRegularizer(0.25)(x)) / 6  # Keras divides by the batch size
    assert value == pytest.approx(0.25 * np_diversity(x), rel=1e-4)


def _random_batch(seed, batch=8, groups=2, dim=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, groups, dim)).astype(np.float32)
    return x, np.array([0, 0, 1, 1, 2, 2, 2, 3][:batch])


def test_pairwise_losses_match_numpy():
    x, labels = _random_batch(6)
    binomial = float(BinomialDevianceLoss(alpha=1.5, beta=0.4, negative_cost=10.0)(labels, x))
    assert binomial == pytest.approx(
        np.mean([np_binomial_deviance(labels, x[:, k], 1.5, 0.4, 10.0) for k in range(2)]),
        rel=1e-4)
    contrastive = float(ContrastiveLoss(margin=1.2)(labels, x))
    assert contrastive == pytest.approx(
        np.mean([np_contrastive(labels, x[:, k], margin=1.2) for k in range(2)]), rel=1e-4)
    x3, labels3 = _random_batch(8, groups=3)
    per_group = float(PerGroupLoss(ContrastiveLoss(), num_groups=3)(labels3, x3.reshape(8, -1)))
    assert per_group == pytest.approx(
        np.mean([np_contrastive(labels3, x3[:, k]) for k in range(3)]), rel=1e-4)
    record("binomial", binomial)
    record("contrastive", contrastive)
    record("per_group_contrastive", per_group)


def test_margin_loss_on_forced_triplets():
    x0, labels, d_ap0, d_an0 = forced_margin_batch(100.0)
    x1, _, d_ap1, d_an1 = forced_margin_batch(130.0)
    assert float(MarginLoss(num_classes=2, seed=0)(labels, x0)) == pytest.approx(
        np_margin(d_ap0, d_an0, beta=1.2), abs=1e-5)
    betas = np.array([[1.2, 0.9], [1.0, 1.5]], np.float32)
    loss = MarginLoss(num_classes=2, num_groups=2, seed=0)
    loss.betas.assign(betas)
    expected = np.mean([np_margin(d_ap0, d_an0, beta=betas[labels, 0]),
                        np_margin(d_ap1, d_an1, beta=betas[labels, 1])])
    grouped = np.stack([x0, x1], axis=1)
    value = float(loss.call(labels, grouped, seed=step_seed(5, 2)))  # seeded path: forced too
    assert value == pytest.approx(expected, abs=1e-5)
    record("margin_forced", value)


def test_losses_compile():
    """Losses with sampling inside the backend's compiled step (XLA on TF and JAX)."""
    x0, labels, d_ap0, d_an0 = forced_margin_batch(100.0)
    loss = MarginLoss(num_classes=2, seed=0)
    expected = np_margin(d_ap0, d_an0, beta=1.2)
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(lambda y, e, s: loss.call(y, e, seed=s))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(lambda y, e, s: loss.call(y, e, seed=s), jit_compile=True)
    else:
        pytest.skip(f"{BACKEND}: Keras trains eagerly, nothing to compile")
    value = compiled(ops.convert_to_tensor(labels), ops.convert_to_tensor(x0), step_seed(1, 4))
    assert float(value) == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------- miner

DIM = 6
NEG_DISTANCES = [0.2, 0.4, 0.9, 1.3, 1.7]


def _fixture_batch():
    rows = [np.eye(DIM)[0], point_at_distance(0.7, 1, DIM)]
    rows += [point_at_distance(d, 1 + i, DIM) for i, d in enumerate(NEG_DISTANCES)]
    return np.stack(rows).astype("float32"), np.array([0, 0, 1, 1, 2, 2, 1], "int32")


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_miner_probabilities_are_the_closed_form():
    embeddings, labels = _fixture_batch()
    logits, has_negative = DistanceWeightedMiner(seed=0).negative_logits(embeddings, labels)
    probabilities = _softmax(to_numpy(logits))
    assert to_numpy(has_negative).all()
    np.testing.assert_allclose(probabilities[0, 2:],
                               closed_form_probabilities(NEG_DISTANCES, DIM), rtol=1e-5)
    assert probabilities[0, :2].sum() == 0.0  # the anchor and its positive: never
    record("miner_probabilities", probabilities)


def test_seeded_draws_follow_the_law_and_repeat_exactly():
    embeddings, labels = _fixture_batch()
    miner = DistanceWeightedMiner(seed=0)
    logits, _ = miner.negative_logits(embeddings, labels)
    draws = 4000
    row = np.repeat(to_numpy(logits)[:1], draws, axis=0)  # one draw per row, 4000 rows
    first = to_numpy(miner._draw(ops.convert_to_tensor(row), step_seed(3, 7)))
    again = to_numpy(DistanceWeightedMiner(seed=9)._draw(ops.convert_to_tensor(row),
                                                          step_seed(3, 7)))
    np.testing.assert_array_equal(first, again)  # same seed and step: the same draws
    counts = np.bincount(first, minlength=7)[2:]
    assert counts.sum() == draws
    expected = draws * closed_form_probabilities(NEG_DISTANCES, DIM)
    assert float(((counts - expected) ** 2 / expected).sum()) < 18.5  # chi2(4) 99.9%
    other = to_numpy(miner._draw(ops.convert_to_tensor(row), step_seed(3, 8)))
    assert (other != first).mean() > 0.3  # the next step draws afresh


def test_mining_is_a_pure_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3).astype("int32")
    runs = [DistanceWeightedMiner(seed=s)(x, labels, seed=step_seed(11, 3)) for s in (1, 2)]
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    triplets = runs[0]
    anchors = np.arange(12)
    assert (labels[to_numpy(triplets.negatives)] != labels).all()
    assert (labels[to_numpy(triplets.positives)] == labels).all()
    assert (to_numpy(triplets.positives) != anchors).all()
    x3 = np.stack([x, x[::-1], x], axis=1)
    margin = MarginLoss(num_classes=4, num_groups=3, seed=0)
    values = [float(margin.call(labels, x3, seed=step_seed(11, 3))) for _ in range(2)]
    assert values[0] == values[1]


# ------------------------------------------------------------------- training model


def test_fit_trajectory_without_sampling(tmp_path):
    images, labels = tiny_batch()
    model = MetricLearningModel(tiny_embedding_model(), ContrastiveLoss(margin=1.0),
                                diversity_weight=0.5, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.2))
    history = model.fit(images, labels, batch_size=8, epochs=6, shuffle=False, verbose=0)
    trajectory = np.asarray(history.history["loss"])
    assert np.isfinite(trajectory).all() and trajectory[-1] < trajectory[0]
    first = to_numpy(model.embedding_model(images)["group_embeddings"])
    record("fit_trajectory", trajectory)
    record("fit_embedding_loss", history.history["embedding_loss"])
    if OUT is not None:
        model.save(OUT / f"{BACKEND}.keras")
        np.save(OUT / f"{BACKEND}_predictions.npy", first)


def test_fit_with_mining_resumes_exactly(tmp_path):
    images, labels = tiny_batch()

    def make():
        keras.utils.set_random_seed(0)
        model = MetricLearningModel(tiny_embedding_model(),
                                    MarginLoss(num_classes=4, num_groups=2), seed=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        return model

    straight = make()
    straight.fit(images, labels, batch_size=8, epochs=4, shuffle=False, verbose=0)
    interrupted = make()
    interrupted.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    interrupted.save(tmp_path / "half.keras")
    keras.backend.clear_session()
    resumed = keras.saving.load_model(tmp_path / "half.keras")
    assert int(to_numpy(resumed.optimizer.iterations)) == 2
    resumed.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    betas = [v for v in resumed.weights if "beta" in v.path]
    assert betas and not np.allclose(to_numpy(betas[0]), 1.2)  # the loss' variables trained
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7)


def test_same_numbers_as_the_backends_before():
    """Compares with the backends that ran earlier in this session (see tests/test_backends.py)."""
    if OUT is None:
        pytest.skip("DGML_BACKEND_OUT not set: run through tests/test_backends.py")
    compared, loaded = [], []
    images, _ = tiny_batch()
    for other in BACKEND_ORDER:
        path = OUT / f"{other}.json"
        if other == BACKEND or not path.exists():
            continue
        theirs = json.loads(path.read_text())["values"]
        for name, mine in RECORD.items():
            np.testing.assert_allclose(mine, theirs[name], rtol=2e-4, atol=2e-6,
                                       err_msg=f"{name}: {BACKEND} vs {other}")
        compared.append(other)
        model = keras.saving.load_model(OUT / f"{other}.keras")
        predicted = to_numpy(model.embedding_model(images)["group_embeddings"])
        np.testing.assert_allclose(predicted, np.load(OUT / f"{other}_predictions.npy"),
                                   rtol=1e-5, atol=1e-6, err_msg=f".keras from {other}")
        loaded.append(other)
    (OUT / f"{BACKEND}.json").write_text(json.dumps(
        {"values": RECORD, "compared_with": compared, "loaded_models_from": loaded}))
