"""Reads PyTorch ``.pth`` checkpoints into NumPy arrays without importing torch.

Two on-disk formats are supported: the zip format (``torch.save`` since PyTorch 1.6) and the
legacy stream format (a sequence of pickles followed by raw storage bytes), in which
torchvision's original ImageNet checkpoints such as ``mobilenet_v2-b0353104.pth`` were written.
The pre-1.0 tar format is rejected with an explanation.

Loading an untrusted file cannot run code: *every* pickle of the file (legacy format: magic
number, protocol version, system info, the object, the storage keys; zip format: ``data.pkl``)
goes through :class:`RestrictedUnpickler`, whose allow-list holds only the tensor rebuild
functions, torch's storage types (``torch.FloatStorage`` ...) and ``collections.OrderedDict``
(the header pickles allow no global at all); any other global raises :class:`UnsafePickleError`
naming it, before anything is called. Sizes, strides and offsets from the file are checked
against their storage before an array is built, storages against the bytes actually present,
and the total size against ``max_bytes``, so a crafted file cannot read out of bounds or make
the reader allocate more than the limit.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
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
# Tensors of one checkpoint, in bytes: torchvision's largest ImageNet models are ~0.6 GB.
MAX_CHECKPOINT_BYTES = 2 << 30

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


class UnsafePickleError(pickle.UnpicklingError, TorchCheckpointError):
    """A pickle in the checkpoint names a global outside the allow-list (it could run code)."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Budget:
    """Counts the bytes a load allocates and refuses to go past ``max_bytes``."""

    def __init__(self, max_bytes: int, path: str):
        self.max_bytes, self.path, self.used = int(max_bytes), path, 0

    def take(self, nbytes: int, what: str) -> None:
        self.used += int(nbytes)
        if self.used > self.max_bytes:
            raise TorchCheckpointError(
                f"{self.path!r}: {what} takes the checkpoint past {self.max_bytes} bytes of "
                "tensors (max_bytes); refusing to allocate it. Raise max_bytes if the file is "
                "trusted and really that large."
            )


def _nonnegative_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TorchCheckpointError(f"Tensor {what} must be a non-negative integer, got {value!r}.")
    return value


def _int_tuple(values, what: str) -> tuple:
    if not isinstance(values, (tuple, list)):
        raise TorchCheckpointError(f"Tensor {what} must be a tuple of integers, got {values!r}.")
    return tuple(_nonnegative_int(v, what) for v in values)


def _make_rebuild_tensor(budget: _Budget):
    def rebuild_tensor(storage, storage_offset, size, stride, *_unused):
        """NumPy view of ``storage`` with torch's (element) offset, size and stride, bounds-checked."""
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise TorchCheckpointError(f"Tensor storage must be a storage of the file, got {type(storage).__name__}.")
        offset = _nonnegative_int(storage_offset, "storage offset")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if len(size) != len(stride):
            raise TorchCheckpointError(f"Tensor size {size} and stride {stride} have different lengths.")
        numel = math.prod(size)
        # Last element read: offset + sum((n - 1) * s); nothing is read when a dimension is 0.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
        if last >= storage.size or (numel and offset >= storage.size):
            raise TorchCheckpointError(
                f"Tensor of size {size}, stride {stride} at offset {offset} reads element {last}, "
                f"beyond its storage of {storage.size} elements: the checkpoint is corrupt or crafted."
            )
        budget.take(numel * storage.dtype.itemsize, f"a tensor of size {size}")
        if len(size) == 0:
            return storage[offset : offset + 1].reshape(())
        return np.lib.stride_tricks.as_strided(
            storage[offset:],
            shape=size,
            strides=tuple(s * storage.dtype.itemsize for s in stride),
            writeable=False,
        )

    return rebuild_tensor


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_unused):
    if not isinstance(data, np.ndarray):
        raise TorchCheckpointError(f"A parameter must wrap a tensor, got {type(data).__name__}.")
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed`` and the persistent ids of
    ``load_storage``; every other global raises :class:`UnsafePickleError` naming it.

    Args:
        file: a binary file object.
        allowed: ``{(module, name): object}``; empty for pickles that need no global.
        allow_storages: resolve ``torch.<X>Storage`` (the types of :data:`STORAGE_DTYPES`).
        load_storage: called with each ``("storage", ...)`` persistent id; None refuses them.

    Example:
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(3)), {}).load()
        3
    """

    def __init__(self, file, allowed, allow_storages: bool = False, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._allowed = dict(allowed)
        self._allow_storages = allow_storages
        self._load_storage = load_storage

    def find_class(self, module, name):
        # Python 2 names (protocol < 3 pickles say __builtin__.eval), as pickle itself maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if self._allow_storages and module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if self._allow_storages and module == "torch" and name.endswith("Storage"):
            raise UnsafePickleError(
                f"Refusing to load global {module}.{name}: storage type torch.{name} has no NumPy "
                "equivalent (bfloat16 and complex storages are not supported); convert the "
                "checkpoint to float32 first."
            )
        allowed = sorted(f"{m}.{n}" for m, n in self._allowed)
        raise UnsafePickleError(
            f"Refusing to load global {module}.{name}: only tensors, storages and OrderedDict "
            f"state dicts are read without torch (allowed here: {allowed or 'no globals'}); the "
            "file may be malicious."
        )

    def persistent_load(self, saved_id):
        if self._load_storage is None or not (
            isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"
        ):
            raise UnsafePickleError(f"Unknown persistent id {saved_id!r}.")
        return self._load_storage(saved_id)


def _state_dict_globals(budget: _Budget) -> dict:
    rebuild = _make_rebuild_tensor(budget)
    return {
        ("torch._utils", "_rebuild_tensor"): rebuild,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


def _storage_id(saved_id, path: str) -> tuple:
    """Checked ``(storage_type, key, numel, rest)`` of a ``("storage", ...)`` persistent id."""
    if len(saved_id) < 5:
        raise TorchCheckpointError(f"{path!r}: malformed storage reference {saved_id!r}.")
    _, storage_type, key, _location, numel, *rest = saved_id
    if not isinstance(storage_type, _StorageType):
        raise TorchCheckpointError(f"{path!r}: storage reference with type {storage_type!r}.")
    if not isinstance(key, str):
        raise TorchCheckpointError(f"{path!r}: storage key {key!r} is not a string.")
    return storage_type, key, _nonnegative_int(numel, "storage size"), rest


def load_torch_checkpoint(path: str | os.PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Any:
    """Loads a ``.pth`` file written by ``torch.save`` with tensors as NumPy arrays.

    Args:
        path: the checkpoint file.
        max_bytes: the most bytes of storages plus tensors the load may allocate.

    Returns:
        The saved object (for a state dict: an ``OrderedDict`` name -> ``np.ndarray``). Arrays
        own their memory and are C-contiguous.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: a pickle names a global outside the allow-list (nothing was run).
        TorchCheckpointError: the file is not a torch checkpoint in a supported format, or its
            tensors do not fit their storages or ``max_bytes``.

    Example:
        >>> state = load_torch_checkpoint("mobilenet_v2-b0353104.pth")  # doctest: +SKIP
        >>> state["features.0.0.weight"].shape  # doctest: +SKIP
        (32, 3, 3, 3)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No PyTorch checkpoint at {path!r}.")
    budget = _Budget(max_bytes, path)
    if zipfile.is_zipfile(path):
        result = _load_zip(path, budget)
    elif tarfile.is_tarfile(path):
        raise TorchCheckpointError(
            f"{path!r} is in PyTorch's pre-1.0 tar format, which this reader does not support; "
            "re-save it with a current torch.save()."
        )
    else:
        with open(path, "rb") as f:
            result = _load_legacy_stream(f, path, budget)
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


def _load_header(f, path: str, what: str):
    """One of the legacy format's plain pickles: no global, no persistent id allowed."""
    try:
        return RestrictedUnpickler(f, {}).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise TorchCheckpointError(f"{path!r} is not a PyTorch checkpoint ({what}: {error}).") from error


def _load_legacy_stream(f, path: str, budget: _Budget):
    """torch.serialization._legacy_load: pickles, then each storage as int64 size + bytes."""
    file_size = os.fstat(f.fileno()).st_size
    magic_number = _load_header(f, path, "magic number")
    if magic_number != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(f"{path!r} is not a PyTorch checkpoint (bad magic number).")
    protocol_version = _load_header(f, path, "protocol version")
    if protocol_version != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(
            f"{path!r}: unsupported legacy protocol version {protocol_version!r}."
        )
    sys_info = _load_header(f, path, "system info")
    if not isinstance(sys_info, dict):
        raise TorchCheckpointError(f"{path!r}: system info is not a dict.")
    if not sys_info.get("little_endian", True):
        raise TorchCheckpointError(f"{path!r} was written on a big-endian machine.")

    storages: dict[str, np.ndarray] = {}

    def load_storage(saved_id):
        storage_type, root_key, numel, rest = _storage_id(saved_id, path)
        if root_key not in storages:
            nbytes = numel * storage_type.dtype.itemsize
            # The bytes follow in this file: a larger announcement is a lie, refused unallocated.
            if nbytes > file_size:
                raise TorchCheckpointError(
                    f"{path!r}: storage {root_key} announces {numel} elements ({nbytes} bytes), "
                    f"more than the file's {file_size} bytes."
                )
            budget.take(nbytes, f"storage {root_key}")
            storages[root_key] = np.zeros(numel, dtype=storage_type.dtype)
        storage = storages[root_key]
        if storage.dtype != storage_type.dtype:
            raise TorchCheckpointError(f"{path!r}: storage {root_key} is used with two dtypes.")
        view_metadata = rest[0] if rest else None
        if view_metadata is not None:
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
                raise TorchCheckpointError(f"{path!r}: malformed storage view {view_metadata!r}.")
            _view_key, offset, view_size = view_metadata
            offset = _nonnegative_int(offset, "storage view offset")
            view_size = _nonnegative_int(view_size, "storage view size")
            if offset + view_size > storage.size:
                raise TorchCheckpointError(
                    f"{path!r}: a view of {view_size} elements at {offset} exceeds storage "
                    f"{root_key} of {storage.size} elements."
                )
            return storage[offset : offset + view_size]
        return storage

    unpickler = RestrictedUnpickler(f, _state_dict_globals(budget), allow_storages=True,
                                    load_storage=load_storage)
    result = unpickler.load()
    storage_keys = _load_header(f, path, "storage keys")
    if not isinstance(storage_keys, list) or not all(isinstance(k, str) for k in storage_keys):
        raise TorchCheckpointError(f"{path!r}: the storage keys are not a list of strings.")
    for key in storage_keys:
        if key not in storages:
            raise TorchCheckpointError(f"{path!r}: storage {key} is listed but never used.")
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise TorchCheckpointError(f"{path!r} is truncated (storage {key}).")
        (numel,) = struct.unpack("<q", header)
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


def _load_zip(path: str, budget: _Budget):
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
            storage_type, key, numel, _rest = _storage_id(saved_id, path)
            if key not in storages:
                name = f"{prefix}data/{key}"
                try:
                    info = archive.getinfo(name)
                except KeyError:
                    raise TorchCheckpointError(f"{path!r} lacks {name}.") from None
                nbytes = numel * storage_type.dtype.itemsize
                if info.file_size < nbytes:
                    raise TorchCheckpointError(
                        f"{path!r}: storage {key} announces {numel} elements ({nbytes} bytes), "
                        f"but {name} holds {info.file_size} bytes."
                    )
                budget.take(info.file_size, f"storage {key}")  # checked before decompressing
                storages[key] = np.frombuffer(archive.read(name), dtype=np.uint8)[:nbytes].view(
                    storage_type.dtype)
            storage = storages[key]
            if storage.dtype != storage_type.dtype:
                raise TorchCheckpointError(f"{path!r}: storage {key} is used with two dtypes.")
            return storage

        info = archive.getinfo(pickles[0])
        budget.take(info.file_size, "data.pkl")
        with archive.open(pickles[0]) as f:
            data = f.read()
        return RestrictedUnpickler(io.BytesIO(data), _state_dict_globals(budget), allow_storages=True,
                                   load_storage=load_storage).load()


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
