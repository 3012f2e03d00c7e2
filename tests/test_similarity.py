"""tensorflow-similarity 0.17.1 under Keras 3: losses in graph mode, and the whole
SimilarityModel flow (fit, index, lookup, evaluate_retrieval, save, reload) with our head."""

import keras
import numpy as np
import pytest
import tensorflow as tf

tfsim = pytest.importorskip("tensorflow_similarity")

from dgml_tf.layers import AttentiveGrouping, flatten_groups  # noqa: E402
from dgml_tf.losses import PerGroupLoss  # noqa: E402
from dgml_tf.similarity import (  # noqa: E402
    build_similarity_model,
    load_similarity_model,
    make_tfsim_loss,
    save_similarity_model,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_make_tfsim_loss_builds_and_runs_in_graph_and_xla():
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(8, 4))).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="reduction"):
        tfsim.losses.MultiSimilarityLoss()  # the breakage being worked around
    # Reference: the library's eager value with a Keras 3 reduction, before any wrapping.
    expected = float(tfsim.losses.TripletLoss(reduction="sum_over_batch_size")(labels, x))
    loss = make_tfsim_loss(tfsim.losses.TripletLoss)
    assert loss.reduction == "sum_over_batch_size"
    assert float(tf.function(loss)(labels, x)) == pytest.approx(expected, rel=1e-5)
    xla_value = tf.function(loss, jit_compile=True)(labels, x)
    assert float(xla_value) == pytest.approx(expected, rel=1e-5)
    assert make_tfsim_loss(loss) is loss  # wrapping twice is a no-op
    with pytest.raises(TypeError, match="MetricLoss"):
        make_tfsim_loss(keras.losses.MeanSquaredError())


def test_per_group_loss_with_tfsim_loss_is_the_mean_of_tfsim_group_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    reference = tfsim.losses.MultiSimilarityLoss(reduction="sum_over_batch_size")
    unit = _unit(x).astype(np.float32)
    expected = np.mean([float(reference(labels, unit[:, k])) for k in range(2)])
    loss = PerGroupLoss(tfsim.losses.MultiSimilarityLoss, num_groups=2)
    assert float(loss(labels, x)) == pytest.approx(expected, rel=1e-5)
    assert float(tf.function(loss)(labels, x)) == pytest.approx(expected, rel=1e-5)
    assert loss.distance.name == "cosine"


def _synthetic_images(per_class=6, classes=4, size=16, seed=0):
    """Each class: a bright square in its own quadrant, plus noise, pixels in [0, 255]."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    half = size // 2
    for label in range(classes):
        row, col = divmod(label, 2)
        for _ in range(per_class):
            image = rng.uniform(0, 60, size=(size, size, 3))
            image[row * half:(row + 1) * half, col * half:(col + 1) * half, label % 3] += 180
            images.append(image)
            labels.append(label)
    return np.asarray(images, np.float32), np.asarray(labels, np.int32)


def _embedding_model():
    images = keras.Input((16, 16, 3))
    features = keras.layers.Rescaling(1.0 / 255)(images)
    features = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(features)
    groups = AttentiveGrouping(num_groups=2, group_dim=4, reduction=2)(features)
    embedding = flatten_groups(groups)
    return keras.Model(images, {"embedding": embedding, "group_embeddings": groups})


def test_similarity_model_flow_fit_index_lookup_save_reload(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _synthetic_images()
    model = build_similarity_model(_embedding_model())
    assert model.outputs[0].shape[-1] == 8  # the flattened (B, K*d) embedding
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=PerGroupLoss(tfsim.losses.MultiSimilarityLoss, num_groups=2),
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=12, epochs=1, verbose=0)  # 2 steps
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))

    model.index(x, y, data=np.arange(len(x)), verbose=0)
    assert model.index_size() == len(x)
    neighbours = model.lookup(x[:5], k=3, verbose=0)
    assert len(neighbours) == 5 and all(len(n) == 3 for n in neighbours)
    # Every indexed query finds itself first (distance ~0).
    assert [n[0].data for n in neighbours] == list(range(5))
    assert all(n[0].distance == pytest.approx(0.0, abs=1e-4) for n in neighbours)
    results = model.evaluate_retrieval(
        x, y, retrieval_metrics=[tfsim.retrieval_metrics.RecallAtK(k=1)], verbose=0
    )
    assert 0.0 <= float(results["recall@1"]) <= 1.0

    path = str(tmp_path / "similarity")
    save_similarity_model(model, path)
    reloaded = load_similarity_model(path)
    assert isinstance(reloaded, tfsim.models.SimilarityModel)
    assert reloaded.index_size() == len(x)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    again = reloaded.lookup(x[:5], k=3, verbose=0)
    assert [[m.data for m in n] for n in again] == [[m.data for m in n] for n in neighbours]
    assert [[m.label for m in n] for n in again] == [[m.label for m in n] for n in neighbours]


def test_build_and_load_errors(tmp_path):
    images = keras.Input((4,))
    outputs = {"a": keras.layers.Dense(2)(images), "b": keras.layers.Dense(3)(images)}
    two = keras.Model(images, outputs)
    with pytest.raises(KeyError, match="output_key"):
        build_similarity_model(two)
    grouped = keras.Model(images, keras.layers.Reshape((2, 2))(keras.layers.Dense(4)(images)))
    with pytest.raises(ValueError, match="flatten_groups"):
        build_similarity_model(grouped)
    with pytest.raises(FileNotFoundError, match="save_similarity_model"):
        load_similarity_model(str(tmp_path))
