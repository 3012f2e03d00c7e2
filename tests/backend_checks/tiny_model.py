"""A tiny embedding model with fixed weights, the same on every backend (backend checks)."""

import keras
import numpy as np

from dgml_tf.layers import AttentiveGrouping, flatten_groups


def fixed_weights(layer_or_model, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for variable in layer_or_model.weights:
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype("float32"))


def tiny_embedding_model():
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    groups, attention = AttentiveGrouping(num_groups=2, group_dim=4, reduction=2,
                                          return_attention=True)(features)
    model = keras.Model(inputs, {"embedding": flatten_groups(groups),
                                 "group_embeddings": groups, "attention": attention})
    fixed_weights(model, seed=4)
    return model


def tiny_batch():
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 1, size=(8, 6, 6, 3)).astype("float32")
    return images, np.array([0, 0, 1, 1, 2, 2, 3, 3], "int32")
