"""Read a PyTorch state dict saved in torch's legacy (non-zip) format into numpy, without torch.

Pretrained weights published as ``.pth`` files are pickles, and unpickling runs whatever
callables the file names. This reader names only the handful of globals the format needs,
maps each to an inert stand-in of its own, and refuses any other global before anything is
called, so no code from the file runs and torch need not be installed.

The legacy layout (torch.save with ``_use_new_zipfile_serialization=False``) is a sequence of
pickles, then raw bytes:

1. the magic number, 2. the protocol version (1001), 3. system info (byte order, sizes),
4. the object itself, whose tensors are ``torch._utils._rebuild_tensor_v2`` calls on storages
   given as persistent ids ``("storage", <type>, key, location, numel, view)``,
5. the list of storage keys, then for each key: an int64 element count and the raw elements.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# Storage classes the legacy format names, and the element type each one holds.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """A file this reader will not or cannot read; the message names the file and why."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and its kin: only its element type matters."""

    name: str
    dtype: np.dtype


@dataclass(eq=False)
class _Storage:
    """One storage of the file; its elements are read after the pickle (``data``)."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a view of a storage, made an array later."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS`` (to stand-ins) and storages' persistent ids."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], source: str) -> None:
        super().__init__(file)
        self.storages = storages
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TorchFileError(
                f"{self.source} names the global {module}.{name}, which a torch weights file "
                f"does not need; refusing to load it (allowed: {_allowed_names()})"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchFileError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self.source}: storage of unknown type {storage_type!r:.80}")
        if view is not None:
            raise TorchFileError(f"{self.source}: storage views (pre-1.0 torch) are not supported")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _allowed_names() -> str:
    return ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS if not n.endswith("Storage")) + (
        ", torch.<Type>Storage"
    )


def read_legacy_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in ``path`` as {name: array}, each array a copy in the tensor's shape."""
    path = Path(path)
    return load_legacy(path.read_bytes(), source=str(path))


def load_legacy(data: bytes, source: str = "<bytes>") -> dict[str, np.ndarray]:
    """``read_legacy_pth`` on the file's bytes (``source`` names it in errors)."""
    if data[:4] == b"PK\x03\x04":
        raise TorchFileError(
            f"{source} is a zip-format torch file (torch >= 1.6); this reader takes the legacy "
            "format only"
        )
    stream = io.BytesIO(data)
    storages: dict[str, _Storage] = {}

    def next_pickle() -> Any:
        try:
            return _RestrictedUnpickler(stream, storages, source).load()
        except TorchFileError:
            raise
        except Exception as exc:  # a truncated or foreign file: say so in one line
            raise TorchFileError(f"{source} is not a legacy torch file ({exc})") from None

    if next_pickle() != MAGIC_NUMBER:
        raise TorchFileError(f"{source} is not a legacy torch file (wrong magic number)")
    if (version := next_pickle()) != PROTOCOL_VERSION:
        raise TorchFileError(f"{source}: unsupported torch protocol version {version!r}")
    info = next_pickle()
    if not (isinstance(info, dict) and info.get("little_endian", False)):
        raise TorchFileError(f"{source}: only little-endian files are supported")
    obj = next_pickle()
    keys = next_pickle()
    if not (isinstance(keys, list) and set(map(str, keys)) == set(storages)):
        raise TorchFileError(f"{source}: the storage key list does not match the tensors")
    for key in map(str, keys):
        storage = storages[key]
        header = stream.read(8)
        count = int.from_bytes(header, "little", signed=True) if len(header) == 8 else -1
        raw = stream.read(max(count, 0) * storage.dtype.itemsize)
        if count != storage.numel or len(raw) != count * storage.dtype.itemsize:
            raise TorchFileError(f"{source} is truncated or corrupt at storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _state_dict(obj, source)


def _state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise TorchFileError(f"{source} holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise TorchFileError(f"{source}: entry {name!r} is not a tensor")
        out[str(name)] = _to_array(value, source, str(name))
    return out


def _to_array(ref: _TensorRef, source: str, name: str) -> np.ndarray:
    """The tensor's elements as a contiguous array, bounds checked against its storage."""
    data = ref.storage.data
    assert data is not None  # every storage is read before tensors are made
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if any(n == 0 for n in ref.shape):
        return np.zeros(ref.shape, data.dtype)
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= data.size:
        raise TorchFileError(f"{source}: tensor {name!r} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view)
