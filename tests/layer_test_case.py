"""The standard checks every Keras layer of this package must pass, in one call.

In the spirit of keras-hub's ``TestCase.run_layer_test`` (keras_hub/src/tests/test_case.py):
one call per layer configuration checks what every layer test would otherwise re-code:

1. eager and symbolic calls give the expected output shape(s), and the expected weight counts;
2. ``get_config`` / ``from_config`` (and ``keras.layers.serialize`` / ``deserialize``) round
   trip, and the clone with the same weights gives the same outputs, bit for bit;
3. a ``.keras`` file of a model holding the layer loads and gives identical outputs;
4. under ``mixed_float16`` and ``mixed_bfloat16`` the variables stay float32, the outputs have
   the policy's compute dtype (or float32 where the layer says so) and are finite;
5. one ``fit`` step of a tiny model around the layer, against random targets, gives a finite
   loss and changes every trainable weight.

A helper module, not a test file (pytest collects only ``test_*.py``); BUILD ships it as data
of the tests that import it, like ``tests/serving_harness.py``.

Example::

    from layer_test_case import run_layer_test

    def test_standard_layer_checks():
        run_layer_test(FlattenGroups, {}, np.ones((2, 3, 4), "float32"), (2, 12))
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Sequence

import keras
import numpy as np

MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _outputs(value) -> list:
    """The layer's output(s) as a flat list."""
    return list(keras.tree.flatten(value))


def _shapes(value) -> list:
    return [tuple(None if d is None else int(d) for d in t.shape) for t in _outputs(value)]


def _expected_shapes(expected_output_shape) -> list:
    """One shape ``(2, 3)`` or several ``((2, 3), (2, 4))``, as a list of tuples."""
    if expected_output_shape and isinstance(expected_output_shape[0], (tuple, list)):
        return [tuple(s) for s in expected_output_shape]
    return [tuple(expected_output_shape)]


def _numpy(value) -> list:
    return [keras.ops.convert_to_numpy(t) for t in _outputs(value)]


def _assert_identical(actual, expected, what: str) -> None:
    for a, e in zip(_numpy(actual), _numpy(expected), strict=True):
        np.testing.assert_array_equal(a, e, err_msg=what)


def check_shapes_and_weights(layer_cls, init_kwargs, input_data, expected_output_shape,
                             expected_num_trainable_weights: Optional[int] = None,
                             expected_num_non_trainable_weights: Optional[int] = None):
    """Eager and symbolic calls have the expected output shapes; returns the built layer."""
    expected = _expected_shapes(expected_output_shape)
    symbolic = layer_cls(**init_kwargs)(keras.KerasTensor(input_data.shape, "float32"))
    assert _shapes(symbolic) == expected, f"symbolic output shapes {_shapes(symbolic)}"
    layer = layer_cls(**init_kwargs)
    eager = layer(input_data)
    assert _shapes(eager) == expected, f"eager output shapes {_shapes(eager)}"
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    return layer


def check_config_round_trip(layer, input_data) -> None:
    """``from_config(get_config())`` rebuilds the layer; with its weights, the same outputs."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    clone(input_data)  # build
    clone.set_weights(layer.get_weights())
    _assert_identical(clone(input_data), layer(input_data), "from_config clone, same weights")


def check_keras_file_round_trip(layer, input_data) -> None:
    """A model holding the layer, saved as ``.keras`` and loaded, gives identical outputs."""
    inputs = keras.Input(input_data.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = model(input_data)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "layer.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert any(type(sub) is type(layer) for sub in loaded.layers)
    _assert_identical(loaded(input_data), expected, ".keras save/load")


def check_mixed_precision(layer_cls, init_kwargs, input_data,
                          float32_outputs: Sequence[int] = ()) -> None:
    """Float32 variables, policy-dtype (or declared float32) finite outputs, per policy."""
    for name in MIXED_PRECISION_POLICIES:
        policy = keras.DTypePolicy(name)
        layer = layer_cls(**{**init_kwargs, "dtype": policy})
        outputs = _outputs(layer(input_data))
        for weight in layer.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == policy.variable_dtype, (
                f"{name}: variable {weight.path} is {weight.dtype}")
        for i, output in enumerate(outputs):
            expected = "float32" if i in float32_outputs else policy.compute_dtype
            dtype = keras.backend.standardize_dtype(output.dtype)
            assert dtype == expected, f"{name}: output {i} is {dtype}, expected {expected}"
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(
                keras.ops.cast(output, "float32")))), f"{name}: output {i} is not finite"


def check_fit_step(layer_cls, init_kwargs, input_data, seed: int = 0) -> None:
    """One SGD step against random targets: finite loss, every trainable weight moves."""
    inputs = keras.Input(input_data.shape[1:])
    layer = layer_cls(**init_kwargs)
    outputs = _outputs(layer(inputs))
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])
    rng = np.random.default_rng(seed)
    targets = [rng.normal(size=(len(input_data),) + tuple(o.shape[1:])).astype("float32")
               for o in outputs]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse"] * len(outputs),
                  jit_compile=False)
    if len(outputs) == 1:
        targets = targets[0]
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.trainable_weights]
    history = model.fit(input_data, targets, batch_size=len(input_data), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for weight, old in zip(layer.trainable_weights, before, strict=True):
        assert np.abs(keras.ops.convert_to_numpy(weight) - old).max() > 0, (
            f"fit did not change {weight.path}")


def run_layer_test(
    layer_cls: type,
    init_kwargs: Mapping[str, Any],
    input_data: np.ndarray,
    expected_output_shape,
    *,
    expected_num_trainable_weights: Optional[int] = None,
    expected_num_non_trainable_weights: Optional[int] = None,
    float32_outputs: Sequence[int] = (),
    run_saving_check: bool = True,
    run_precision_checks: bool = True,
    run_training_check: bool = True,
) -> None:
    """Runs the standard layer checks (module docstring) on one layer configuration.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments (without ``dtype``: the precision check sets it).
        input_data: one float32 batch (the layer's single input).
        expected_output_shape: the output shape, or a tuple of shapes for several outputs.
        expected_num_trainable_weights: if given, the number of trainable weights.
        expected_num_non_trainable_weights: if given, the number of non-trainable weights.
        float32_outputs: indices of outputs that stay float32 under mixed precision (e.g.
            attention maps, which the layer computes in float32 by design).
        run_saving_check: the ``.keras`` round trip.
        run_precision_checks: the mixed-precision checks.
        run_training_check: the ``fit`` step (skipped for layers without trainable weights,
            whose gradient step would have nothing to change).
    """
    input_data = np.asarray(input_data, "float32")
    layer = check_shapes_and_weights(layer_cls, dict(init_kwargs), input_data,
                                     expected_output_shape, expected_num_trainable_weights,
                                     expected_num_non_trainable_weights)
    check_config_round_trip(layer, input_data)
    if run_saving_check:
        check_keras_file_round_trip(layer, input_data)
    if run_precision_checks:
        check_mixed_precision(layer_cls, dict(init_kwargs), input_data, float32_outputs)
    if run_training_check and layer.trainable_weights:
        check_fit_step(layer_cls, dict(init_kwargs), input_data)
