"""Tests of dgml_tf.models: backbones, frozen BatchNorm, the model builder, parameter groups."""

import keras
import numpy as np
import pytest

from dgml_tf.layers import PixelNormalization
from layer_test_case import run_layer_test
from dgml_tf.models import (
    FrozenBatchNormalization,
    available_backbones,
    build_embedding_model,
    get_backbone,
    parameter_groups,
)

TINY = (16, 16, 3)


def _images(n, shape=TINY, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype("float32")


@pytest.mark.parametrize(
    "head, expected",
    [
        ("attentive", {"embedding": (None, 12), "group_embeddings": (None, 3, 4),
                       "attention": (None, 3, 2, 2)}),
        ("grouping", {"embedding": (None, 12), "group_embeddings": (None, 3, 4)}),
        ("single", {"embedding": (None, 13), "group_embeddings": (None, 1, 13)}),
    ],
)
def test_heads_on_small_cnn_follow_the_contract(head, expected):
    model = build_embedding_model("small_cnn", TINY, head=head, num_groups=3, embedding_dim=13,
                                  reduction=4, freeze_batch_norm=False)
    assert {k: tuple(v.shape) for k, v in model.output.items()} == expected
    out = model(_images(2), training=False)
    k = expected["group_embeddings"][1]
    np.testing.assert_allclose(np.linalg.norm(out["group_embeddings"].numpy(), axis=-1), 1.0,
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"].numpy(), axis=-1), np.sqrt(k),
                               atol=1e-5)
    if head == "attentive":
        np.testing.assert_allclose(out["attention"].numpy().sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_resnet50_builds_at_small_input_with_caffe_preprocessing():
    model = build_embedding_model("resnet50", (64, 64, 3), weights=None)
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert shapes == {"embedding": (None, 510), "group_embeddings": (None, 3, 170),
                      "attention": (None, 3, 2, 2)}
    grouping = model.get_layer("attentive_grouping")
    assert tuple(grouping.key_kernel.shape) == (2048, 256)  # C / 8
    backbone = model.get_layer("resnet50_backbone")
    preprocess = [layer for layer in backbone.layers if isinstance(layer, PixelNormalization)]
    assert len(preprocess) == 1
    x = _images(2, (4, 4, 3))
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(preprocess[0](x).numpy(), expected, atol=1e-4)
    # freeze_batch_norm defaults to True: every BatchNorm of ResNet50 is frozen.
    batch_norms = [layer for layer in _all_layers(backbone)
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 53
    assert all(isinstance(layer, FrozenBatchNormalization) for layer in batch_norms)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _batch_norm_statistics(model):
    return [w.numpy().copy() for layer in _all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


def _batch_norm_gammas(model):
    return [layer.gamma.numpy().copy() for layer in _all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _fit_one_step(model):
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss={"embedding": "mse"}, jit_compile=False)
    x = _images(4, seed=1)
    y = np.random.default_rng(2).normal(size=(4, model.output["embedding"].shape[-1]))
    model.fit(x, {"embedding": y.astype("float32")}, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batch_norm_statistics_in_fit(freeze):
    model = build_embedding_model("small_cnn", TINY, head="grouping", num_groups=2,
                                  embedding_dim=8, freeze_batch_norm=freeze)
    statistics, gammas = _batch_norm_statistics(model), _batch_norm_gammas(model)
    assert statistics  # the backbone has BatchNorm layers
    _fit_one_step(model)
    stats_changed = [not np.array_equal(a, b)
                     for a, b in zip(statistics, _batch_norm_statistics(model))]
    gammas_changed = [not np.array_equal(a, b) for a, b in zip(gammas, _batch_norm_gammas(model))]
    if freeze:
        assert not any(stats_changed)
    else:
        assert all(stats_changed)
    assert any(gammas_changed)  # gamma/beta train in both cases


def test_frozen_batch_norm_ignores_training_flag():
    layer = FrozenBatchNormalization()
    x = np.random.default_rng(3).normal(loc=5.0, size=(8, 4)).astype("float32")
    layer.build(x.shape)
    layer.gamma.assign(np.full(4, 2.0, "float32"))
    out = layer(x, training=True).numpy()
    # Inference mode with moving mean 0 and variance 1: y = 2 x / sqrt(1 + eps).
    np.testing.assert_allclose(out, 2.0 * x / np.sqrt(1.0 + layer.epsilon), rtol=1e-5)


def test_save_load_keeps_frozen_batch_norm_and_outputs(tmp_path):
    model = build_embedding_model("small_cnn", TINY, head="attentive", num_groups=2,
                                  embedding_dim=8, reduction=4, freeze_batch_norm=True)
    x = _images(2, seed=4)
    expected = model(x)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    actual = loaded(x)
    for key in ("embedding", "group_embeddings", "attention"):
        np.testing.assert_array_equal(actual[key].numpy(), expected[key].numpy())
    batch_norms = [layer for layer in _all_layers(loaded)
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(isinstance(b, FrozenBatchNormalization) for b in batch_norms)


def test_parameter_groups_partition_trainable_variables():
    model = build_embedding_model("small_cnn", TINY, head="attentive", num_groups=3,
                                  embedding_dim=12, reduction=4, projection=True,
                                  freeze_batch_norm=False)
    groups = parameter_groups(model)
    grouping = model.get_layer("attentive_grouping")
    assert [id(v) for v in groups["queries"]] == [id(grouping.queries)]
    assert {id(v) for v in groups["key_value"]} == {
        id(grouping.key_kernel), id(grouping.value_kernel), id(grouping.projection_kernel)}
    backbone_ids = {id(v) for v in model.get_layer("small_cnn_backbone").trainable_variables}
    assert {id(v) for v in groups["backbone"]} == backbone_ids
    assert sum(len(v) for v in groups.values()) == len(model.trainable_variables)

    baseline = build_embedding_model("small_cnn", TINY, head="single", embedding_dim=5,
                                     freeze_batch_norm=False)
    groups = parameter_groups(baseline)
    assert groups["queries"] == []
    head_kernel = baseline.get_layer("single_embedding").kernel
    assert [id(v) for v in groups["key_value"]] == [id(head_kernel)]


def test_diversity_weight_attaches_regularizer_to_group_embeddings():
    from dgml_tf.losses import DiversityRegularizer

    model = build_embedding_model("small_cnn", TINY, head="attentive", num_groups=3,
                                  embedding_dim=12, reduction=4, diversity_weight=0.5,
                                  freeze_batch_norm=False)
    layer = model.get_layer("attentive_grouping")
    assert isinstance(layer.group_activity_regularizer, DiversityRegularizer)
    out = model(_images(4, seed=5))
    groups = out["group_embeddings"].numpy().astype(np.float64)
    # method.md: L_div = 1/(K-1) * sum_{i<j} mean_b softplus(2 * 25 * (cos_ij - 0.5)).
    pair_terms = [np.mean(np.logaddexp(0.0, 50.0 * (np.sum(groups[:, i] * groups[:, j], -1) - 0.5)))
                  for i in range(3) for j in range(i + 1, 3)]
    expected = 0.5 * sum(pair_terms) / 2
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-4)


def test_mixed_precision_outputs_are_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_embedding_model("small_cnn", TINY, head="attentive", num_groups=2,
                                  embedding_dim=8, reduction=4, freeze_batch_norm=False)
    out = model(_images(2))
    assert {k: v.dtype for k, v in out.items()} == {
        "embedding": "float32", "group_embeddings": "float32", "attention": "float32"}
    assert all(np.all(np.isfinite(v.numpy())) for v in out.values())


def test_bad_arguments_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5.*does not exist"):
        get_backbone("resnet50", (64, 64, 3), weights=missing)
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'.*resnet50"):
        build_embedding_model("vgg", TINY)
    with pytest.raises(ValueError, match="Unknown head 'gated'"):
        build_embedding_model("small_cnn", TINY, head="gated")
    with pytest.raises(ValueError, match="RGB images"):
        get_backbone("small_cnn", (16, 16, 1))
    with pytest.raises(ValueError, match="at least 8x8"):
        get_backbone("small_cnn", (4, 4, 3))
    with pytest.raises(ValueError, match="projection=True applies only"):
        build_embedding_model("small_cnn", TINY, head="grouping", projection=True)
    assert set(available_backbones()) >= {"resnet50", "small_cnn", "mobilenet_v2"}


def test_keras_mobilenet_v2_backbone_preprocessing():
    backbone = get_backbone("mobilenet_v2", (32, 32, 3), weights=None, freeze_batch_norm=False)
    assert tuple(backbone.output.shape) == (None, 1, 1, 1280)
    preprocess = [layer for layer in backbone.layers if isinstance(layer, PixelNormalization)][0]
    x = _images(1, (2, 2, 3))
    np.testing.assert_allclose(preprocess(x).numpy(),
                               keras.applications.mobilenet_v2.preprocess_input(x.copy()),
                               atol=1e-5)


def test_small_cnn_weights_file_loads_into_frozen_backbone(tmp_path):
    trained = get_backbone("small_cnn", TINY, weights=None, freeze_batch_norm=False)
    trained.get_layer("stage0_bn0").moving_mean.assign(np.arange(32, dtype="float32"))
    path = tmp_path / "small_cnn.weights.h5"
    trained.save_weights(path)
    frozen = get_backbone("small_cnn", TINY, weights=path, freeze_batch_norm=True)
    assert isinstance(frozen.get_layer("stage0_bn0"), FrozenBatchNormalization)
    for expected, actual in zip(trained.get_weights(), frozen.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_feature_layer_takes_an_inner_map_with_the_same_values():
    full = get_backbone("small_cnn", (32, 32, 3), freeze_batch_norm=False)
    cut = get_backbone("small_cnn", (32, 32, 3), freeze_batch_norm=False,
                       feature_layer="stage1_pool")
    # Two 2x2 poolings: 32 / 4 = 8 positions per side, stage 1 has 64 channels.
    assert tuple(cut.output.shape) == (None, 8, 8, 64)
    cut.set_weights(full.get_weights()[: len(cut.get_weights())])
    inner = keras.Model(full.inputs, full.get_layer("stage1_pool").output)
    x = _images(2, (32, 32, 3))
    np.testing.assert_allclose(cut(x).numpy(), inner(x).numpy(), atol=1e-5)
    # Keras applications: ResNet50's conv4 output has stride 16 (64 / 16 = 4).
    resnet = get_backbone("resnet50", (64, 64, 3), weights=None, feature_layer="conv4_block6_out")
    assert tuple(resnet.output.shape) == (None, 4, 4, 1024)
    with pytest.raises(ValueError, match="feature_layer='stage9'.*stage0_conv0"):
        get_backbone("small_cnn", TINY, feature_layer="stage9")


def test_trainable_from_freezes_only_the_layers_before_it():
    model = build_embedding_model("small_cnn", (16, 16, 3), head="attentive", num_groups=2,
                                  embedding_dim=8, freeze_batch_norm=False,
                                  trainable_from="stage2_conv0")
    backbone = model.get_layer("small_cnn_backbone")
    frozen = [l for l in backbone.layers if l.name.startswith(("stage0", "stage1")) and l.weights]
    trained = [l for l in backbone.layers if l.name.startswith("stage2") and l.weights]
    assert frozen and trained
    assert all(not l.trainable for l in frozen) and all(l.trainable for l in trained)
    before = {l.name: [w.copy() for w in l.get_weights()] for l in frozen + trained}
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"embedding": "mse"})
    x = _images(8, (16, 16, 3))
    model.fit(x, {"embedding": np.ones((8, 8), "float32")}, epochs=1, verbose=0)
    for layer in frozen:  # weights and BatchNorm statistics untouched
        for old, new in zip(before[layer.name], layer.get_weights()):
            np.testing.assert_array_equal(new, old)
    assert any(not np.array_equal(old, new) for layer in trained
               for old, new in zip(before[layer.name], layer.get_weights()))
    with pytest.raises(ValueError, match="trainable_from='nope'.*stage0_conv0"):
        get_backbone("small_cnn", TINY, trainable_from="nope")


@pytest.mark.parametrize("init_kwargs", [{}, {"momentum": 0.9, "epsilon": 1e-3}])
def test_frozen_batch_norm_standard_layer_checks(init_kwargs):
    x = np.random.default_rng(10).normal(loc=3.0, size=(4, 3, 3, 5)).astype("float32")
    # gamma and beta train; the moving mean and variance are non-trainable.
    run_layer_test(FrozenBatchNormalization, init_kwargs, x, (4, 3, 3, 5),
                   expected_num_trainable_weights=2, expected_num_non_trainable_weights=2)


@pytest.mark.parametrize("preset", ["caffe", "torch", "tf"])
def test_pixel_normalization_standard_layer_checks(preset):
    x = _images(2, (4, 4, 3))
    config = getattr(PixelNormalization, preset)().get_config()
    init_kwargs = {key: config[key] for key in ("mean", "std", "reverse_channels")}
    run_layer_test(PixelNormalization, init_kwargs, x, (2, 4, 4, 3),
                   expected_num_trainable_weights=0, expected_num_non_trainable_weights=0)
