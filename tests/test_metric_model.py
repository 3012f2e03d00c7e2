"""MetricLearningModel: logged loss terms, seeds, saving, and the full package path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgml_tf.losses import ContrastiveLoss, MarginLoss
from dgml_tf.models import build_embedding_model
from dgml_tf.train import GroupConfig, MetricLearningModel, StepSchedule, build_grouped_optimizer

_spec = importlib.util.spec_from_file_location(
    "_multiworker_worker", Path(__file__).with_name("_multiworker_worker.py")
)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def numpy_diversity(groups, beta1=2.0, beta2=0.5, scale=25.0):
    """method.md: 1/(K-1) * sum_{i<j} mean_b softplus(beta1*C*(cos_ij - beta2))."""
    unit = groups / np.linalg.norm(groups, axis=-1, keepdims=True)
    k = groups.shape[1]
    total = 0.0
    for i in range(k):
        for j in range(i + 1, k):
            cos = np.sum(unit[:, i] * unit[:, j], axis=-1)
            total += np.mean(np.logaddexp(0.0, beta1 * scale * (cos - beta2)))
    return total / (k - 1)


def numpy_contrastive(labels, groups, margin=1.0):
    """Per group: mean over positive pairs of d^2/2 + mean over negatives of relu(m-d)^2/2."""
    values = []
    for k in range(groups.shape[1]):
        x = groups[:, k] / np.linalg.norm(groups[:, k], axis=-1, keepdims=True)
        d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
        same = labels[:, None] == labels[None]
        positive = same & ~np.eye(len(labels), dtype=bool)
        values.append(
            np.mean(0.5 * d[positive] ** 2) + np.mean(0.5 * np.maximum(margin - d[~same], 0) ** 2)
        )
    return float(np.mean(values))


def test_fit_logs_embedding_and_diversity_terms_separately():
    images, labels = worker.global_batch()
    model = MetricLearningModel(
        worker.build_tiny_embedding_model(), ContrastiveLoss(), diversity_weight=0.3, seed=0
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    groups = model(images)["group_embeddings"].numpy().astype(np.float64)
    history = model.fit(
        tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0
    ).history
    embedding, diversity = numpy_contrastive(labels, groups), numpy_diversity(groups)
    assert history["embedding_loss"][0] == pytest.approx(embedding, rel=1e-4)
    assert history["diversity_loss"][0] == pytest.approx(diversity, rel=1e-4)
    assert history["loss"][0] == pytest.approx(embedding + 0.3 * diversity, rel=1e-4)
    assert history["learning_rate"][0] == pytest.approx(1e-3)


class SeedProbeLoss(keras.losses.Loss):
    """Returns a stateless random number of its seed, to observe the seed it is handed."""

    def call(self, labels, groups, seed=None):
        return tf.random.stateless_uniform((), seed=seed) + 0.0 * tf.reduce_sum(groups)


def test_loss_gets_a_seed_keyed_on_run_seed_and_step():
    images, labels = worker.global_batch()
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model = MetricLearningModel(worker.build_tiny_embedding_model(), SeedProbeLoss(), seed=11)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    values = model.fit(dataset, epochs=3, steps_per_epoch=1, verbose=0).history["embedding_loss"]
    expected = [float(tf.random.stateless_uniform((), seed=[11, step])) for step in range(3)]
    assert values == pytest.approx(expected, rel=1e-6)


def test_package_model_margin_loss_grouped_optimizer_fit_save_load(tmp_path):
    images = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], "int32")
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    embedding_model = build_embedding_model(
        backbone="small_cnn", input_shape=(16, 16, 3), head="attentive", num_groups=2,
        embedding_dim=8, weights=None,
    )
    model = MetricLearningModel(
        embedding_model, MarginLoss(num_classes=4, num_groups=2, seed=0), diversity_weight=0.1,
        seed=5,
    )
    groups = model.parameter_groups()
    assert [v.path for v in groups["loss"]] == [model.embedding_loss.betas.path]
    assert any(v is model.embedding_loss.betas for v in model.trainable_variables)
    assert groups["queries"] and groups["key_value"] and groups["backbone"]
    schedule = StepSchedule((1,), 0.3)
    optimizer = build_grouped_optimizer(
        model,
        {
            "backbone": GroupConfig(1e-3, 3e-3, schedule=schedule),
            "key_value": GroupConfig(1e-3, 3e-3, schedule=schedule),
            "queries": GroupConfig(1e-3, 1e-3, schedule=schedule),
            "loss": GroupConfig(5e-2, schedule=schedule),
        },
        steps_per_epoch=2,
    )
    model.compile(optimizer=optimizer)
    betas_before = model.embedding_loss.betas.numpy().copy()
    history = model.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0).history
    assert history["learning_rate_loss"] == pytest.approx([5e-2, 1.5e-2])  # last step of epoch
    assert history["learning_rate_queries"] == pytest.approx([1e-3, 3e-4])
    assert not np.allclose(model.embedding_loss.betas.numpy(), betas_before)
    assert all(np.isfinite(v) for v in history["loss"])

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MetricLearningModel)
    assert (loaded.seed, loaded.diversity_weight) == (5, pytest.approx(0.1))
    np.testing.assert_allclose(loaded.embedding_loss.betas.numpy(), model.embedding_loss.betas.numpy())
    expected = {k: v.numpy() for k, v in model(images).items()}
    got = loaded.predict(images, verbose=0)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    assert int(loaded.optimizer.iterations) == 4
    assert MetricLearningModel.from_config(model.get_config()).get_config()["seed"] == 5


def test_save_load_then_resume_equals_uninterrupted(tmp_path):
    images, labels = worker.global_batch()
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()

    def fresh():
        model = MetricLearningModel(
            worker.build_tiny_embedding_model(), ContrastiveLoss(), diversity_weight=0.2, seed=2
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        return model

    straight = fresh()
    straight.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0)
    first = fresh()
    first.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    first.save(tmp_path / "half.keras")
    resumed = keras.models.load_model(tmp_path / "half.keras")
    resumed.fit(dataset, epochs=2, initial_epoch=1, steps_per_epoch=2, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_bad_input_errors():
    tiny = worker.build_tiny_embedding_model()
    model = MetricLearningModel(tiny, ContrastiveLoss(), seed=0)
    with pytest.raises(ValueError, match="do not pass `loss`"):
        model.compile(optimizer="adam", loss="mse")
    flat = keras.Model(tiny.inputs, tiny.output["embedding"])
    with pytest.raises(ValueError, match="'group_embeddings'"):
        MetricLearningModel(flat, ContrastiveLoss())
    with pytest.raises(ValueError, match="reduction='none'"):
        MetricLearningModel(tiny, ContrastiveLoss(reduction="none"))
    with pytest.raises(ValueError, match="diversity_weight"):
        MetricLearningModel(tiny, ContrastiveLoss(), diversity_weight=-1.0)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="integer labels"):
        model.fit(tf.data.Dataset.from_tensors(worker.global_batch()[0]), verbose=0)
