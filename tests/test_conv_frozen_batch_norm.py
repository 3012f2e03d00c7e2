"""Folding frozen BatchNorms into the convolutions before them (dgml_tf.models.conv_frozen_batch_norm).

The expectations come from Keras' own Conv2D + the package's FrozenBatchNormalization on the
same weights (the unfolded model), never from the folded code itself.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgml_tf import flags as dgml_flags
from dgml_tf.models import (
    ConvFrozenBatchNorm,
    FoldedBatchNormalization,
    FrozenBatchNormalization,
    build_embedding_model,
    fold_batch_norm_for_inference,
    fold_frozen_batch_norm,
    get_backbone,
)
from dgml_tf.models.conv_frozen_batch_norm import folded_pair_count
from dgml_tf.models.saving import load_keras_model
from layer_test_case import run_layer_test

RNG = np.random.default_rng(0)


def _images(n, shape=(32, 32, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _randomise_batch_norms(model, seed=1):
    """Statistics and affine parameters far from the identity, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, c).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, c).astype("float32"))


def _unfolded_reference(layer, x):
    """Keras Conv2D then FrozenBatchNormalization with the folded layer's weights."""
    config = {k: v for k, v in layer.get_config().items()
              if not k.startswith("batch_norm_") and k != "name"}
    conv = keras.layers.Conv2D(**config)
    conv.build(x.shape)
    bn = FrozenBatchNormalization(epsilon=layer.batch_norm_epsilon)
    bn.build(conv.compute_output_shape(x.shape))
    weights = layer.get_weights()
    n_conv = 2 if layer.use_bias else 1
    conv.set_weights(weights[:n_conv])
    bn.set_weights(weights[n_conv:])
    return bn(conv(x), training=True).numpy()


@pytest.mark.parametrize("kwargs", [
    {"filters": 4, "kernel_size": 3, "padding": "same"},
    {"filters": 6, "kernel_size": 1, "strides": 2, "use_bias": False},
    {"filters": 5, "kernel_size": (3, 1), "padding": "valid", "batch_norm_epsilon": 1.001e-5},
])
def test_matches_conv_then_frozen_batch_norm(kwargs):
    x = RNG.normal(size=(3, 9, 9, 3)).astype("float32")
    layer = ConvFrozenBatchNorm(**kwargs)
    layer.build(x.shape)
    rng = np.random.default_rng(2)
    for variable in layer.weights[1:]:  # the kernel stays random from its initializer
        values = rng.uniform(0.3, 2.0, variable.shape).astype("float32")
        variable.assign(values)
    np.testing.assert_allclose(layer(x).numpy(), _unfolded_reference(layer, x),
                               rtol=1e-5, atol=1e-5)


def test_standard_layer_checks():
    x = RNG.normal(size=(4, 6, 6, 3)).astype("float32")
    # kernel, bias, gamma, beta train; the moving mean and variance do not.
    run_layer_test(ConvFrozenBatchNorm, {"filters": 4, "kernel_size": 3, "padding": "same"}, x,
                   (4, 6, 6, 4), expected_num_trainable_weights=4,
                   expected_num_non_trainable_weights=2)


def test_refuses_an_activation_inside_the_convolution():
    with pytest.raises(ValueError, match="must be linear"):
        ConvFrozenBatchNorm(filters=2, kernel_size=1, activation="relu")


def _gradients(model, x):
    """``{id(variable): gradient}`` of a fixed nonlinear function of the output."""
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_sum(tf.sin(out / 10.0) * tf.range(out.shape[-1], dtype=out.dtype))
    grads = tape.gradient(loss, model.trainable_variables)
    return {id(v): g.numpy() for v, g in zip(model.trainable_variables, grads)}


def _variables_by_role(model, trainable_only=False):
    """``{(conv layer, variable name): variable}``: a BatchNorm's weights belong to the layer
    that feeds it, so a folded and an unfolded model key the same values alike."""
    roles = {}
    for layer in _all_layers(model):
        if isinstance(layer, keras.Model):
            continue
        owner = layer.name
        if isinstance(layer, FrozenBatchNormalization):
            owner = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation.name
        for v in (layer.trainable_weights if trainable_only else layer.weights):
            roles[(owner, v.name)] = v
    return roles


def test_resnet50_folds_every_pair_and_keeps_function_and_weights():
    unfolded = get_backbone("resnet50", (64, 64, 3), freeze_batch_norm=True)
    _randomise_batch_norms(unfolded)
    folded = fold_frozen_batch_norm(unfolded)
    assert folded_pair_count(folded) == 53  # every Conv2D of ResNet50 is followed by its BN
    bns = [layer for layer in _all_layers(folded) if isinstance(layer, FoldedBatchNormalization)]
    assert sorted(layer.name for layer in bns) == sorted(
        layer.name for layer in _all_layers(unfolded) if isinstance(layer, FrozenBatchNormalization))
    x = _images(2, (64, 64, 3))
    expected, actual = unfolded(x).numpy(), folded(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    old, new = _variables_by_role(unfolded), _variables_by_role(folded)
    assert set(old) == set(new)
    for key in old:
        np.testing.assert_array_equal(new[key].numpy(), old[key].numpy())
        assert new[key].trainable == old[key].trainable
    assert len(folded.trainable_variables) == len(unfolded.trainable_variables)


def test_small_cnn_gradients_and_a_training_step_match_the_unfolded_model():
    shape = (16, 16, 3)
    unfolded = get_backbone("small_cnn", shape, freeze_batch_norm=True)
    _randomise_batch_norms(unfolded)
    folded = fold_frozen_batch_norm(unfolded)
    assert folded_pair_count(folded) > 0
    x = _images(4, shape, seed=5)
    old, new = (_variables_by_role(m, trainable_only=True) for m in (unfolded, folded))
    assert set(old) == set(new) and len(old) == len(unfolded.trainable_variables)
    g_old, g_new = _gradients(unfolded, x), _gradients(folded, x)
    for key in old:
        a, b = g_old[id(old[key])], g_new[id(new[key])]
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * max(np.abs(a).max(), 1e-6),
                                   err_msg=str(key))
    # One SGD step on the same batch moves the same values the same way.
    for model in (unfolded, folded):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
        model.fit(x, np.ones((4, *model.output.shape[1:]), "float32"), batch_size=4, verbose=0)
    for key in old:
        np.testing.assert_allclose(new[key].numpy(), old[key].numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=str(key))


def test_pairs_that_cannot_fold_are_kept():
    inputs = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")(inputs)
    a = FrozenBatchNormalization(name="bn_shared")(shared)
    b = keras.layers.ReLU(name="also_reads_shared")(shared)  # the conv has a second reader
    act = keras.layers.Conv2D(4, 1, activation="relu", name="with_act")(inputs)
    c = FrozenBatchNormalization(name="bn_act")(act)
    dw = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(inputs)
    d = FrozenBatchNormalization(name="bn_dw")(dw)
    plain = keras.layers.Conv2D(4, 1, name="plain")(inputs)
    e = FrozenBatchNormalization(name="bn_plain")(plain)
    trained = keras.layers.BatchNormalization(name="bn_training")(
        keras.layers.Conv2D(4, 1, name="before_training_bn")(inputs))
    model = keras.Model(inputs, [a, b, c, d, e, trained])
    _randomise_batch_norms(model)
    folded = fold_frozen_batch_norm(model)
    kinds = {layer.name: type(layer).__name__ for layer in folded.layers}
    assert kinds["plain"] == "ConvFrozenBatchNorm" and kinds["bn_plain"] == "FoldedBatchNormalization"
    for name in ("shared", "with_act", "before_training_bn"):
        assert kinds[name] == "Conv2D", name
    for name in ("bn_shared", "bn_act", "bn_dw"):
        assert kinds[name] == "FrozenBatchNormalization", name
    assert kinds["bn_training"] == "BatchNormalization"
    x = RNG.normal(size=(2, 8, 8, 3)).astype("float32")
    for expected, actual in zip(model(x, training=False), folded(x, training=False)):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_nothing_to_fold_returns_the_model_itself():
    model = get_backbone("small_cnn", (16, 16, 3), freeze_batch_norm=False)
    assert fold_frozen_batch_norm(model) is model


def test_train_backbone_from_a_batch_norm_keeps_that_pair_apart():
    # Unfolded, the conv before "stage1_bn0" is frozen and the BN trains: folding them would
    # freeze (or train) both, so that pair stays as it is.
    kwargs = dict(freeze_batch_norm=True, trainable_from="stage1_bn0")
    unfolded = get_backbone("small_cnn", (16, 16, 3), **kwargs)
    folded = get_backbone("small_cnn", (16, 16, 3), fold_batch_norm=True, **kwargs)
    assert type(folded.get_layer("stage1_bn0")) is FrozenBatchNormalization
    assert folded_pair_count(folded) > 0
    trainable = lambda m: sorted((v.path.split("/")[-2].replace("_conv", ""), v.name)  # noqa: E731
                                 for v in m.trainable_variables)
    assert len(folded.trainable_variables) == len(unfolded.trainable_variables)
    assert {n for _, n in trainable(folded)} == {n for _, n in trainable(unfolded)}


def test_folded_embedding_model_saves_and_loads(tmp_path):
    model = build_embedding_model("small_cnn", (16, 16, 3), head="attentive", num_groups=2,
                                  embedding_dim=8, reduction=4, freeze_batch_norm=True,
                                  fold_batch_norm=True)
    _randomise_batch_norms(model)
    assert folded_pair_count(model) > 0
    x = _images(2, (16, 16, 3), seed=6)
    expected = model(x)
    model.save(tmp_path / "folded.keras")
    loaded = load_keras_model(tmp_path / "folded.keras")
    assert folded_pair_count(loaded) == folded_pair_count(model)
    for key in ("embedding", "group_embeddings", "attention"):
        np.testing.assert_array_equal(loaded(x)[key].numpy(), expected[key].numpy())


def test_folded_embedding_model_under_mixed_bfloat16_stays_close():
    keras.utils.set_random_seed(4)
    kwargs = dict(head="attentive", num_groups=2, embedding_dim=8, reduction=4,
                  freeze_batch_norm=True)
    reference = build_embedding_model("small_cnn", (16, 16, 3), **kwargs)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        folded = build_embedding_model("small_cnn", (16, 16, 3), fold_batch_norm=True, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    folded.set_weights(reference.get_weights())  # the same order: conv's then BN's weights
    conv = [layer for layer in _all_layers(folded) if isinstance(layer, ConvFrozenBatchNorm)][0]
    assert conv.compute_dtype == "bfloat16" and conv.gamma.dtype == "float32"
    x = _images(2, (16, 16, 3), seed=7)
    a, b = reference(x)["embedding"].numpy(), folded(x)["embedding"].numpy()
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=0.05)  # bf16 has 8 mantissa bits


def test_runs_from_before_the_flag_did_not_fold():
    live = dgml_flags.training_config_from_args(["--backbone=small_cnn"])
    assert live["fold_batch_norm"] is True
    old = {k: v for k, v in live.items() if k != "fold_batch_norm"}
    assert dgml_flags.changed_training_flags(old, live) == ["--fold_batch_norm: False -> True"]
    assert dgml_flags.changed_training_flags(live, live) == []
    legacy = dgml_flags.training_config_from_args(["--backbone=small_cnn", "--nofold_batch_norm"])
    assert dgml_flags.changed_training_flags(old, legacy) == []


def test_fold_flag_is_no_change_for_a_run_without_frozen_batch_norms():
    # The main job (fashion_mnist.flags, --nofreeze_bn) must not retrain an older run over it.
    live = dgml_flags.training_config_from_args(["--backbone=small_cnn", "--nofreeze_bn"])
    old = {k: v for k, v in live.items() if k != "fold_batch_norm"}
    assert dgml_flags.changed_training_flags(old, live) == []
    frozen = dgml_flags.training_config_from_args(["--backbone=small_cnn", "--freeze_bn"])
    assert dgml_flags.changed_training_flags(old, frozen) == [
        "--fold_batch_norm: False -> True", "--freeze_bn: False -> True"]


def test_folded_model_exports_to_savedmodel_and_onnx_like_the_unfolded_one(tmp_path):
    import dgml_tf.export as dgml_export

    kwargs = dict(head="attentive", num_groups=2, embedding_dim=8, reduction=4,
                  freeze_batch_norm=True)
    keras.utils.set_random_seed(8)
    unfolded = build_embedding_model("small_cnn", (32, 32, 3), **kwargs)
    _randomise_batch_norms(unfolded)
    folded = build_embedding_model("small_cnn", (32, 32, 3), fold_batch_norm=True, **kwargs)
    folded.set_weights(unfolded.get_weights())
    version_dir = dgml_export.export_for_serving(folded, tmp_path / "models", "dgml",
                                                 image_size=(32, 32), resize_size=32)
    images = _images(3, (32, 32, 3), seed=9)
    expected = unfolded(images)["embedding"].numpy()
    served = tf.saved_model.load(str(version_dir)).signatures["embed_pixels"](
        images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)
    onnx_out = dgml_export.run_onnx(dgml_export.export_onnx(version_dir, tmp_path / "m.onnx"),
                                    images)["embedding"]
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)


def _inference_outputs(model, x):
    return [np.asarray(o) for o in keras.tree.flatten(model(x, training=False))]


@pytest.mark.parametrize("trained_fold", [False, True])
def test_inference_fold_is_the_models_inference_function_with_plain_convolutions(trained_fold):
    # Trainable BatchNorms (the main job) and a training fold (ConvFrozenBatchNorm) alike end
    # as plain biased Conv2Ds; the expectation is Keras' own model at training=False.
    kwargs = dict(head="attentive", num_groups=2, embedding_dim=8, reduction=4)
    keras.utils.set_random_seed(11)
    plain_bn = build_embedding_model("small_cnn", (32, 32, 3), freeze_batch_norm=False, **kwargs)
    _randomise_batch_norms(plain_bn, seed=12)
    model = plain_bn
    if trained_fold:
        model = build_embedding_model("small_cnn", (32, 32, 3), freeze_batch_norm=True,
                                      fold_batch_norm=True, **kwargs)
        model.set_weights(plain_bn.get_weights())  # the same values, in the folded layers
    served = fold_batch_norm_for_inference(model)
    layers = list(_all_layers(served))
    assert not any(isinstance(l, (keras.layers.BatchNormalization, ConvFrozenBatchNorm))
                   for l in layers)
    convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 6 and all(type(l) is keras.layers.Conv2D and l.use_bias for l in convs)
    assert sum(isinstance(l, FoldedBatchNormalization) for l in layers) == 6
    x = _images(3, (32, 32, 3), seed=13)
    for actual, expected in zip(_inference_outputs(served, x), _inference_outputs(plain_bn, x)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4,
                                   atol=1e-4 * (1 + np.abs(expected).max()))
    # The model it came from is untouched and still trains its BatchNorm statistics.
    assert any(type(l) is keras.layers.BatchNormalization for l in _all_layers(plain_bn))


def test_inference_fold_of_resnet50_removes_every_batch_norm():
    model = get_backbone("resnet50", (64, 64, 3), freeze_batch_norm=False)
    _randomise_batch_norms(model, seed=14)
    served = fold_batch_norm_for_inference(model)
    layers = list(_all_layers(served))
    assert sum(isinstance(l, FoldedBatchNormalization) for l in layers) == 53
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in layers)
    x = _images(2, (64, 64, 3), seed=15)
    expected, actual = model(x, training=False).numpy(), served(x, training=False).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_inference_fold_without_batch_norms_returns_the_model_itself():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    assert fold_batch_norm_for_inference(model) is model


def test_export_serves_the_folded_model_and_records_it(tmp_path):
    import dgml_tf.export as dgml_export
    from dgml_tf.export.metadata import read_export_metadata

    keras.utils.set_random_seed(16)
    model = build_embedding_model("small_cnn", (32, 32, 3), head="attentive", num_groups=2,
                                  embedding_dim=8, reduction=4, freeze_batch_norm=False)
    _randomise_batch_norms(model, seed=17)
    images = _images(3, (32, 32, 3), seed=18)
    expected = model(images, training=False)["embedding"].numpy()
    counts = {}
    for fold in (True, False):
        version_dir = dgml_export.export_for_serving(
            model, tmp_path / f"fold_{fold}", "dgml", image_size=(32, 32), resize_size=32,
            fold_batch_norm=fold)
        loaded = tf.saved_model.load(str(version_dir))
        served = loaded.signatures["embed_pixels"](images=tf.constant(images))
        np.testing.assert_allclose(served["embedding"].numpy(), expected, atol=1e-4)
        metadata = read_export_metadata(version_dir)
        counts[fold] = (metadata["batch_norm_folded"],
                        sum("moving_mean" in v.name for v in loaded.variables))
    assert counts == {True: (6, 0), False: (0, 6)}
