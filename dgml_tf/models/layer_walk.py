"""The one walk over a functional model's layers, nested models included."""

from __future__ import annotations

from typing import Iterator

import keras


def flat_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` in topological order, descending into nested models (which are
    not yielded themselves).

    Example:
        >>> inner = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="d")])
        >>> outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.ReLU(name="r")])
        >>> [layer.name for layer in flat_layers(outer)]
        ['d', 'r']
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        else:
            yield layer
