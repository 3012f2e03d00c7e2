"""JAX ``keras.distribution.DataParallel``: two devices give the one-device loss and gradients.

Run by tests/test_backends.py with ``KERAS_BACKEND=jax`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two CPU devices). The same global batch
of 8 trains one step with plain SGD (learning rate 1, so the gradient is ``w_before - w_after``)
once on one device and once data-parallel over both; the metric loss must see the whole global
batch in both (cross-replica mining: pairs, and the distance-weighted miner's draws, span the
devices' shards).
"""

from __future__ import annotations

import jax
import keras
import numpy as np
import pytest
from keras import ops

from backend_checks.numpy_reference import np_contrastive
from backend_checks.tiny_model import tiny_batch, tiny_embedding_model
from dgml_tf.losses import ContrastiveLoss, MarginLoss
from dgml_tf.train import MetricLearningModel


def _one_step(loss_factory, distribution):
    keras.backend.clear_session()
    keras.distribution.set_distribution(distribution)
    try:
        images, labels = tiny_batch()
        model = MetricLearningModel(tiny_embedding_model(), loss_factory(), diversity_weight=0.5,
                                    seed=3)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
        before = [np.array(ops.convert_to_numpy(v)) for v in model.trainable_variables]
        groups = np.array(ops.convert_to_numpy(model.embedding_model(images)["group_embeddings"]))
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        after = [np.array(ops.convert_to_numpy(v)) for v in model.trainable_variables]
        devices = {d for v in model.trainable_variables for d in v.value.sharding.device_set}
        gradients = [b - a for b, a in zip(before, after)]
        return history.history, gradients, len(devices), groups
    finally:
        keras.distribution.set_distribution(None)


@pytest.mark.parametrize(
    "loss_factory",
    [lambda: ContrastiveLoss(margin=1.0), lambda: MarginLoss(num_classes=4, num_groups=2)],
    ids=["contrastive", "margin_distance_weighted"],
)
def test_two_devices_give_the_one_device_loss_and_gradients(loss_factory):
    devices = jax.devices()
    assert len(devices) == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    distribution = keras.distribution.DataParallel(devices=devices)
    # The batch axis really is split over the two devices.
    assert distribution.get_data_layout((8, 6, 6, 3)).axes[0] == "batch"
    single, single_gradients, single_devices, groups = _one_step(loss_factory, None)
    parallel, parallel_gradients, parallel_devices, _ = _one_step(loss_factory, distribution)
    assert (single_devices, parallel_devices) == (1, 2)
    assert parallel["loss"][0] == pytest.approx(single["loss"][0], rel=1e-5)
    if isinstance(loss_factory(), ContrastiveLoss):
        # The pairs span the devices' shards: the global-batch value, not the shards' mean.
        _, labels = tiny_batch()
        whole = np.mean([np_contrastive(labels, groups[:, k]) for k in range(2)])
        shards = np.mean([np_contrastive(labels[s], groups[s, k])
                          for s in (slice(0, 4), slice(4, 8)) for k in range(2)])
        assert parallel["embedding_loss"][0] == pytest.approx(whole, rel=1e-5)
        assert abs(whole - shards) > 5e-4  # ~100x the tolerance above: per-shard would fail
    assert any(np.abs(g).max() > 1e-4 for g in single_gradients)
    for single, parallel in zip(single_gradients, parallel_gradients):
        np.testing.assert_allclose(parallel, single, rtol=1e-4, atol=1e-6)
