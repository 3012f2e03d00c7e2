"""Cross-replica training equals single-device training on the same global batch.

Expectations are computed without any tf.distribute machinery: a plain GradientTape on the
whole global batch (the loss of the global batch and its gradient), and closed-form SGD
(``w1 = w0 - 1.0 * grad``) to read gradients back from one ``fit`` step.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from conftest import shared_mirrored_strategy
from dgml_tf.losses import ContrastiveLoss, diversity_loss
from dgml_tf.train import (
    CustomLoopTrainer,
    GroupConfig,
    MetricLearningModel,
    StepSchedule,
    build_grouped_optimizer,
)
from dgml_tf.train.distribute import (
    is_multi_worker,
    num_workers_in_tf_config,
    strategy_from_environment,
)

_WORKER = Path(__file__).with_name("_multiworker_worker.py")
_spec = importlib.util.spec_from_file_location("_multiworker_worker", _WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

DIVERSITY_WEIGHT = 0.5


class LearnableMarginContrastive(keras.losses.Loss):
    """A deterministic pair loss with its own trainable variable (like the margin betas)."""

    def __init__(self, **kwargs):
        super().__init__(name="learnable_margin_contrastive", **kwargs)
        self.margin = keras.Variable(0.9, name="test_margin", dtype="float32")

    @property
    def trainable_variables(self):
        return [self.margin]

    def call(self, labels, groups):
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        x = ops.reshape(groups, (ops.shape(groups)[0], -1))
        squared = ops.sum(ops.square(x[:, None, :] - x[None, :, :]), axis=-1)
        eye = ops.eye(ops.shape(x)[0])
        same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") - eye
        diff = 1.0 - same - eye
        positive = ops.sum(squared * same) / ops.maximum(ops.sum(same), 1.0)
        hinge = ops.relu(self.margin - ops.sqrt(squared + 1e-9))
        negative = ops.sum(ops.square(hinge) * diff) / ops.maximum(ops.sum(diff), 1.0)
        return positive + negative




def two_cpu_strategy():
    """One MirroredStrategy over the 2 logical CPUs, shared by the tests of this module.

    Every new MirroredStrategy restarts TF's collective-op instance keys, which then collide
    with the keys an earlier strategy used in this process ("Collective instance N expected
    type ..."): one instance per process avoids that.
    """
    return shared_mirrored_strategy()


def reference(images, labels, loss):
    """Single-device loss terms and gradients on the whole batch, by a plain tape."""
    model = worker.build_tiny_embedding_model()
    variables = model.trainable_variables + list(getattr(loss, "trainable_variables", []))
    with tf.GradientTape() as tape:
        groups = model(images, training=True)["group_embeddings"]
        embedding = loss(labels, groups)
        diversity = diversity_loss(groups)
        total = embedding + DIVERSITY_WEIGHT * diversity
    grads = tape.gradient(total, variables)
    return {
        "loss": float(total),
        "embedding_loss": float(embedding),
        "diversity_loss": float(diversity),
        "weights": [v.numpy() for v in variables],
        "grads": [g.numpy() for g in grads],
    }


def one_fit_step(strategy, loss_factory, optimizer_factory, gather=True):
    images, labels = worker.global_batch()
    with strategy.scope():
        loss = loss_factory()
        model = MetricLearningModel(
            worker.build_tiny_embedding_model(), loss, diversity_weight=DIVERSITY_WEIGHT,
            gather_across_replicas=gather, seed=1,
        )
        model.compile(optimizer=optimizer_factory(model))
    dataset = tf.data.Dataset.from_tensors((images, labels))
    history = model.fit(dataset, epochs=1, verbose=0)
    weights = [v.numpy() for v in model.embedding_model.trainable_variables]
    weights += [v.numpy() for v in getattr(loss, "trainable_variables", [])]
    return {k: v[0] for k, v in history.history.items()}, weights


def test_mirrored_loss_and_gradients_equal_single_device_global_batch():
    images, labels = worker.global_batch()
    expected = reference(images, labels, LearnableMarginContrastive())
    logs, new_weights = one_fit_step(
        two_cpu_strategy(), LearnableMarginContrastive, lambda m: keras.optimizers.SGD(1.0)
    )
    for name in ("loss", "embedding_loss", "diversity_loss"):
        assert logs[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    # SGD with learning rate 1: the applied gradient is w0 - w1.
    assert len(new_weights) == len(expected["grads"])
    for w0, w1, grad in zip(expected["weights"], new_weights, expected["grads"]):
        np.testing.assert_allclose(w0 - w1, grad, rtol=1e-4, atol=1e-6)
    # The loss variable got its (non-zero) single-device gradient, not R times it.
    assert abs(expected["grads"][-1]) > 1e-3


def test_mirrored_tensorflow_similarity_loss_equals_single_device_global_batch():
    """A Keras loss wrapped in PerGroupLoss (tfsim's multi-similarity, as --loss=multisimilarity
    builds it) keeps its weight under 2 replicas: Keras' Loss.__call__ would divide it by R."""
    pytest.importorskip("tensorflow_similarity")
    from tensorflow_similarity.losses import MultiSimilarityLoss

    from dgml_tf.losses import PerGroupLoss

    def factory():
        return PerGroupLoss(MultiSimilarityLoss, num_groups=2)

    images, labels = worker.global_batch()
    expected = reference(images, labels, factory())
    logs, new_weights = one_fit_step(two_cpu_strategy(), factory,
                                     lambda m: keras.optimizers.SGD(1.0))
    assert expected["embedding_loss"] > 0.1
    for name in ("loss", "embedding_loss", "diversity_loss"):
        assert logs[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    for w0, w1, grad in zip(expected["weights"], new_weights, expected["grads"]):
        np.testing.assert_allclose(w0 - w1, grad, rtol=1e-4, atol=1e-6)


def test_pairs_span_replicas():
    # Each replica holds one image of each class: alone, a replica sees no positive pair.
    images, labels = worker.global_batch()
    assert len(set(labels[:4])) == 4 and len(set(labels[4:])) == 4
    global_value = reference(images, labels, ContrastiveLoss())["embedding_loss"]
    halves = [
        reference(images[s], labels[s], ContrastiveLoss())["embedding_loss"]
        for s in (slice(0, 4), slice(4, 8))
    ]
    sgd = lambda m: keras.optimizers.SGD(1.0)  # noqa: E731
    gathered, _ = one_fit_step(two_cpu_strategy(), ContrastiveLoss, sgd, gather=True)
    local, _ = one_fit_step(two_cpu_strategy(), ContrastiveLoss, sgd, gather=False)
    assert gathered["embedding_loss"] == pytest.approx(global_value, rel=1e-5)
    assert local["embedding_loss"] == pytest.approx(np.mean(halves), rel=1e-5)
    # Positives only exist across replicas: the two values differ far beyond the tolerance.
    assert abs(global_value - np.mean(halves)) > 100 * 1e-5 * global_value


def test_full_fit_step_with_grouped_adam_gives_same_weights():
    def grouped(model):
        head = model.embedding_model.get_layer("head").kernel
        backbone = [v for v in model.embedding_model.trainable_variables if v is not head]
        return build_grouped_optimizer(
            model,
            {
                "backbone": GroupConfig(1e-2, weight_decay=1e-2, schedule=StepSchedule((1,), 0.3)),
                "key_value": GroupConfig(3e-2, weight_decay=1e-2, decoupled=True),
                "loss": GroupConfig(5e-2),
            },
            steps_per_epoch=1,
            variable_groups={
                "backbone": backbone, "key_value": [head],
                "loss": model.embedding_loss.trainable_variables,
            },
        )

    single_logs, single = one_fit_step(
        tf.distribute.get_strategy(), LearnableMarginContrastive, grouped
    )
    mirrored_logs, mirrored = one_fit_step(two_cpu_strategy(), LearnableMarginContrastive, grouped)
    assert mirrored_logs["loss"] == pytest.approx(single_logs["loss"], rel=1e-5)
    assert mirrored_logs["learning_rate_key_value"] == pytest.approx(3e-2)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


class RecordingCallback(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_custom_loop_runs_the_fit_step_math_and_calls_callbacks():
    images, labels = worker.global_batch()
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    strategy = two_cpu_strategy()
    results = []
    for use_custom_loop in (False, True):
        with strategy.scope():
            model = MetricLearningModel(
                worker.build_tiny_embedding_model(), ContrastiveLoss(),
                diversity_weight=DIVERSITY_WEIGHT, seed=4,
            )
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
        recorder = RecordingCallback()
        if use_custom_loop:
            history = CustomLoopTrainer(model, strategy).fit(
                dataset, epochs=2, steps_per_epoch=2, callbacks=[recorder], verbose=0
            )
        else:
            history = model.fit(
                dataset, epochs=2, steps_per_epoch=2, callbacks=[recorder], verbose=0
            )
        results.append((history.history, model.get_weights(), recorder.events))
    (fit_logs, fit_weights, fit_events), (loop_logs, loop_weights, loop_events) = results
    for name in ("loss", "embedding_loss", "diversity_loss", "learning_rate"):
        assert loop_logs[name] == pytest.approx(fit_logs[name], rel=1e-5), name
    for a, b in zip(fit_weights, loop_weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    kinds = [event[:2] for event in loop_events]
    assert kinds == [event[:2] for event in fit_events]
    assert kinds[:4] == [("train_begin",), ("epoch_begin", 0), ("batch_end", 0), ("batch_end", 1)]
    assert set(loop_events[4][2]) >= {"loss", "embedding_loss", "diversity_loss", "learning_rate"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_custom_loop_equals_single_device(tmp_path):
    ports = [_free_port(), _free_port()]
    env = {
        k: v for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "tf_config")
    }
    env.update(
        PYTHONPATH=str(_WORKER.parent.parent), KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        CUDA_VISIBLE_DEVICES="",
    )
    outputs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(_WORKER), str(i), str(ports[0]), str(ports[1]), str(outputs[i])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=150)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    images, labels = worker.global_batch()
    expected = reference(images, labels, ContrastiveLoss())
    for path in outputs:
        result = np.load(path)
        for name in ("loss", "embedding_loss", "diversity_loss"):
            assert float(result[name]) == pytest.approx(expected[name], rel=1e-5), name
        for i, (w0, grad) in enumerate(zip(expected["weights"], expected["grads"])):
            np.testing.assert_allclose(w0 - result[f"w{i}"], grad, rtol=1e-4, atol=1e-6)


def test_strategy_from_environment(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert num_workers_in_tf_config() == 0
    # No GPUs here: the default strategy, whatever the number of logical CPUs.
    assert strategy_from_environment() is tf.distribute.get_strategy()
    assert not is_multi_worker(tf.distribute.get_strategy())
    assert not is_multi_worker(two_cpu_strategy())
    config = '{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {}}'
    assert num_workers_in_tf_config(config) == 3
    with pytest.raises(ValueError, match="not valid JSON"):
        num_workers_in_tf_config("{cluster")
    with pytest.raises(ValueError, match='no "cluster"'):
        num_workers_in_tf_config('{"task": {}}')
