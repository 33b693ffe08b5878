"""Checkpoint files: plain data (JSON for the structure, an uncompressed npz for numpy arrays and bytes), framed by
a magic and a sha256, rather than pickle: loading runs no code (``allow_pickle=False``), the file names no
Python classes that later refactors would break, and it stays inspectable. Only plain data round-trips: None,
bool, int, float, str, bytes, list, tuple, dict and numpy arrays and scalars.

Structure goes to JSON; arrays, numpy scalars and bytes become {"__tag__": member} references into the npz.
Tuples and dicts with non-str keys are tagged too, so the round trip is exact. A plain dict whose keys start
with "__" is stored as tagged items, so user keys never collide with tags.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from snapshots.npz import json_array, npz_bytes

_CHECKPOINT_MAGIC = b"DYNCKPT1"
_DIGEST_BYTES = 32


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes: magic, sha256 of the payload, payload (see the module docstring)."""
    payload = _encode_checkpoint(state)
    return _CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload


def read_checkpoint_file(path: Path) -> dict[str, Any] | None:
    """The state in a checkpoint file (a checkpoint or a savepoint), or None if it is missing, torn or corrupt."""
    payload = _verified_checkpoint_payload(path)
    return None if payload is None else _decode_checkpoint(payload)


_ARRAY, _SCALAR, _BYTES, _TUPLE, _ITEMS = "__ndarray__", "__scalar__", "__bytes__", "__tuple__", "__items__"


def _encode_checkpoint(state: dict[str, Any]) -> bytes:
    arrays: dict[str, np.ndarray] = {}

    def member(array: np.ndarray) -> str:
        name = f"m{len(arrays)}"
        arrays[name] = array
        return name

    def pack(obj: Any, path: str) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise TypeError(f"checkpoint state at {path}: object arrays cannot be stored without pickle")
            return {_ARRAY: member(obj)}
        if isinstance(obj, np.generic):
            return {_SCALAR: member(np.asarray(obj))}
        if obj is None or type(obj) in (bool, int, float, str):
            return obj
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return {_BYTES: member(np.frombuffer(bytes(obj), np.uint8))}
        if type(obj) is list:
            return [pack(x, f"{path}[{i}]") for i, x in enumerate(obj)]
        if type(obj) is tuple:
            return {_TUPLE: [pack(x, f"{path}[{i}]") for i, x in enumerate(obj)]}
        if type(obj) is dict:
            if all(type(k) is str and not k.startswith("__") for k in obj):
                return {k: pack(v, f"{path}.{k}") for k, v in obj.items()}
            return {_ITEMS: [[pack(k, f"{path} key"), pack(v, f"{path}[{k!r}]")] for k, v in obj.items()]}
        raise TypeError(f"checkpoint state at {path}: cannot store {type(obj).__name__} "
                        "(use None, bool, int, float, str, bytes, list, tuple, dict or numpy arrays)")

    tree = pack(state, "state")
    return npz_bytes({"tree": json_array(tree), **arrays}, compressed=False)


def _decode_checkpoint(payload: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        members = {name: npz[name] for name in npz.files}
    tags = {
        _ARRAY: lambda name: members[name],
        _SCALAR: lambda name: members[name][()],
        _BYTES: lambda name: members[name].tobytes(),
        _TUPLE: lambda items: tuple(unpack(x) for x in items),
        _ITEMS: lambda items: {unpack(k): unpack(v) for k, v in items},
    }

    def unpack(obj: Any) -> Any:
        if type(obj) is list:
            return [unpack(x) for x in obj]
        if type(obj) is dict:
            if len(obj) == 1:
                ((key, value),) = obj.items()
                if key in tags:
                    return tags[key](value)
            return {k: unpack(v) for k, v in obj.items()}
        return obj

    return unpack(json.loads(members.pop("tree").tobytes()))


def _verified_checkpoint_payload(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header = len(_CHECKPOINT_MAGIC) + _DIGEST_BYTES
    if len(data) < header or not data.startswith(_CHECKPOINT_MAGIC):
        return None
    payload = data[header:]
    if hashlib.sha256(payload).digest() != data[len(_CHECKPOINT_MAGIC):header]:
        return None
    return payload
