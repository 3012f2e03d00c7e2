"""Reads PyTorch ``.pth`` checkpoints into NumPy arrays without importing torch.

Two on-disk formats are supported: the zip format (``torch.save`` since PyTorch 1.6) and the
legacy stream format (a sequence of pickles followed by raw storage bytes), in which
torchvision's original ImageNet checkpoints such as ``mobilenet_v2-b0353104.pth`` were written.
The pre-1.0 tar format is rejected with an explanation.

Only the globals a state dict needs are resolved (tensor rebuild functions, storage types,
``collections.OrderedDict``); anything else raises ``pickle.UnpicklingError``, so loading an
untrusted file cannot run code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

# torch.serialization's magic number and protocol version of the legacy stream format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchCheckpointError(ValueError):
    """A checkpoint this reader cannot interpret."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    def __init__(self, name: str):
        if name not in STORAGE_DTYPES:
            raise TorchCheckpointError(
                f"Storage type torch.{name} has no NumPy equivalent (bfloat16 and complex "
                "storages are not supported); convert the checkpoint to float32 first."
            )
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    """NumPy view of ``storage`` with torch's (element) offset, size and stride."""
    itemsize = storage.dtype.itemsize
    if len(size) == 0:
        return storage[storage_offset : storage_offset + 1].reshape(())
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=tuple(size),
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_unused):
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler resolving only state-dict globals; storages come from ``load_storage``."""

    def __init__(self, file, load_storage):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"Refusing to load global {module}.{name}: only tensors, storages and "
            "OrderedDict state dicts are read without torch."
        )

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"Unknown persistent id {saved_id!r}.")
        return self._load_storage(saved_id)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a ``.pth`` file written by ``torch.save`` with tensors as NumPy arrays.

    Args:
        path: the checkpoint file.

    Returns:
        The saved object (for a state dict: an ``OrderedDict`` name -> ``np.ndarray``). Arrays
        own their memory and are C-contiguous.

    Raises:
        FileNotFoundError: the file does not exist.
        TorchCheckpointError: the file is not a torch checkpoint in a supported format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No PyTorch checkpoint at {path!r}.")
    if zipfile.is_zipfile(path):
        result = _load_zip(path)
    elif tarfile.is_tarfile(path):
        raise TorchCheckpointError(
            f"{path!r} is in PyTorch's pre-1.0 tar format, which this reader does not support; "
            "re-save it with a current torch.save()."
        )
    else:
        with open(path, "rb") as f:
            result = _load_legacy_stream(f, path)
    return _materialize(result)


def load_torch_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Like :func:`load_torch_checkpoint`, but insists on (or unwraps) a name -> array mapping.

    A checkpoint ``{"state_dict": {...}}`` (common in training scripts) is unwrapped.
    """
    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise TorchCheckpointError(
            f"{os.fspath(path)!r} does not hold a state dict (a mapping of names to tensors)."
        )
    return collections.OrderedDict(obj)


def _load_legacy_stream(f, path: str):
    """torch.serialization._legacy_load: pickles, then each storage as int64 size + bytes."""
    try:
        magic_number = pickle.load(f)
    except Exception as error:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise TorchCheckpointError(f"{path!r} is not a PyTorch checkpoint ({error}).") from error
    if magic_number != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(f"{path!r} is not a PyTorch checkpoint (bad magic number).")
    protocol_version = pickle.load(f)
    if protocol_version != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(
            f"{path!r}: unsupported legacy protocol version {protocol_version}."
        )
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise TorchCheckpointError(f"{path!r} was written on a big-endian machine.")

    storages: dict[str, np.ndarray] = {}

    def load_storage(saved_id):
        _, storage_type, root_key, _location, numel, *rest = saved_id
        if root_key not in storages:
            storages[root_key] = np.zeros(numel, dtype=storage_type.dtype)
        view_metadata = rest[0] if rest else None
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return storages[root_key][offset : offset + view_size]
        return storages[root_key]

    result = _StateDictUnpickler(f, load_storage).load()
    storage_keys = pickle.load(f)
    for key in storage_keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != storage.size:
            raise TorchCheckpointError(
                f"{path!r}: storage {key} announces {numel} elements, expected {storage.size}."
            )
        data = f.read(numel * storage.dtype.itemsize)
        if len(data) != numel * storage.dtype.itemsize:
            raise TorchCheckpointError(f"{path!r} is truncated (storage {key}).")
        # Filled in place: tensors built during unpickling are views of these arrays.
        storage[:] = np.frombuffer(data, dtype=storage.dtype)
    return result


def _load_zip(path: str):
    """torch.serialization._load: ``<archive>/data.pkl`` plus ``<archive>/data/<key>``."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise TorchCheckpointError(f"{path!r} is a zip file but has no data.pkl.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
            raise TorchCheckpointError(f"{path!r} was written on a big-endian machine.")
        storages: dict[str, np.ndarray] = {}

        def load_storage(saved_id):
            _, storage_type, key, _location, numel = saved_id[:5]
            if key not in storages:
                data = archive.read(f"{prefix}data/{key}")
                storages[key] = np.frombuffer(data, dtype=storage_type.dtype)[:numel]
            return storages[key]

        with archive.open(pickles[0]) as f:
            return _StateDictUnpickler(io.BytesIO(f.read()), load_storage).load()


def _materialize(obj):
    """Copies tensor views into contiguous, writable arrays (recursively)."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True, order="C")
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj
