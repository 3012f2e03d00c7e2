"""One worker of the 2-process MultiWorkerMirroredStrategy test (tests/test_distributed.py).

Run as ``python tests/_multiworker_worker.py <task_index> <port0> <port1> <out.npz>``: joins a
2-worker cluster on 127.0.0.1, feeds its half of a fixed global batch to
``CustomLoopTrainer.fit`` for one SGD(learning_rate=1) step, and writes the logged losses and the
updated weights. The test compares them with a single-device computation on the whole batch.

Also imported by the test for the shared tiny model and batch (no TF work at import time beyond
``import keras``).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 8
IMAGE_SIZE = 8
NUM_GROUPS = 2
GROUP_DIM = 4


def global_batch(seed: int = 0):
    """A fixed global batch: images (8, 8, 8, 3) in [0, 255] and labels with 2 per class."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3], dtype="int32")  # halves hold one of each class
    return images, labels


def build_tiny_embedding_model(seed: int = 0):
    """A deterministic (seeded initialisers) tiny model with the package's output contract."""
    import keras

    init = keras.initializers.GlorotUniform
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(
        4, 3, padding="same", activation="tanh", kernel_initializer=init(seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1), name="conv",
    )(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(
        NUM_GROUPS * GROUP_DIM, use_bias=False, kernel_initializer=init(seed + 2), name="head"
    )(x)
    groups = keras.layers.Reshape((NUM_GROUPS, GROUP_DIM), name="groups")(x)
    groups = keras.layers.UnitNormalization(axis=-1, name="unit")(groups)
    embedding = keras.layers.Flatten(name="flat")(groups)
    return keras.Model(
        inputs, {"embedding": embedding, "group_embeddings": groups}, name="tiny_embedding"
    )


def main(task_index: int, ports: list, out_path: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": task_index},
        }
    )
    import keras
    import tensorflow as tf

    from dgml_tf.losses import ContrastiveLoss
    from dgml_tf.train import CustomLoopTrainer, MetricLearningModel
    from dgml_tf.train.distribute import is_multi_worker, strategy_from_environment

    strategy = strategy_from_environment()
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), strategy
    assert is_multi_worker(strategy)
    images, labels = global_batch()
    half = GLOBAL_BATCH // 2

    def dataset_fn(input_context):
        start = input_context.input_pipeline_id * half
        rows = slice(start, start + half)
        return tf.data.Dataset.from_tensors((images[rows], labels[rows])).repeat()

    with strategy.scope():
        model = MetricLearningModel(
            build_tiny_embedding_model(), ContrastiveLoss(), diversity_weight=0.5, seed=3
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    history = CustomLoopTrainer(model, strategy).fit(
        dataset_fn, epochs=1, steps_per_epoch=1, verbose=0
    )
    np.savez(
        out_path,
        loss=history.history["loss"][0],
        embedding_loss=history.history["embedding_loss"][0],
        diversity_loss=history.history["diversity_loss"][0],
        **{f"w{i}": w for i, w in enumerate(model.embedding_model.get_weights())},
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(p) for p in sys.argv[2:4]], sys.argv[4])
