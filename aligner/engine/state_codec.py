"""The aligner's state as plain data: arrays and JSON, never pickle, so loading a state can run no code.

Checkpoints and savepoints are files people hand to each other, and a sha256 proves integrity, not authorship:
anyone can recompute it. A pickle (what ``torch.save`` writes) runs whatever its author put in it when loaded.
This codec writes one zip archive instead: ``tree.json`` holds the structure (dicts, lists, tuples, sets,
numbers, strings) and every tensor, array or byte string is a ``.npy`` entry it names. Reading parses JSON and
loads each entry with ``allow_pickle=False``; an object dtype, an unknown tag or anything that is not this
format is an error, never an import. Objects with state of their own (river's detectors) are encoded by
their owners as such plain data first.

>>> import torch
>>> tree = {"w": torch.arange(3.0), "ids": ("a", "b"), "pairs": {("a", "b"): [1, 2]}, "seen": {3}, "n": None}
>>> back = decode(encode(tree))
>>> back["w"].tolist(), back["ids"], back["pairs"], back["seen"], back["n"]
([0.0, 1.0, 2.0], ('a', 'b'), {('a', 'b'): [1, 2]}, {3}, None)
>>> encode({"f": lambda: 0})
Traceback (most recent call last):
...
TypeError: state: cannot store a function as plain data (at f)
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import torch

MAGIC = "dynalign-state/1"
TREE = "tree.json"
TAG = "$"  # dict keys starting with it are tags; a real key that does is stored the long way ($dict)


PICKLED = ("a pickled aligner state (what dynalign wrote before its plain-data format, or a crafted file) is "
           "refused: loading a pickle can run any code in it; start a fresh state dir or rebuild the savepoint "
           "with this version")


class StateFormatError(ValueError):
    """Bytes that are not a state this codec wrote (another format, a pickle, damaged or tampered with)."""


def encode(tree: Any) -> bytes:
    """``tree`` (dicts, lists, tuples, sets, None, bool, int, float, str, bytes, numpy arrays, torch tensors) as
    one zip of JSON and ``.npy`` entries; anything else raises :class:`TypeError` naming where it was."""
    arrays: list[np.ndarray] = []

    def put(array: np.ndarray) -> int:
        if array.dtype.hasobject:
            raise TypeError("state: object arrays cannot be stored without pickle")
        arrays.append(np.ascontiguousarray(array))
        return len(arrays) - 1

    def walk(x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            return float(x)
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, torch.Tensor):
            return {"$tensor": put(x.detach().cpu().numpy())}
        if isinstance(x, np.ndarray):
            return {"$array": put(x)}
        if isinstance(x, (bytes, bytearray)):
            return {"$bytes": put(np.frombuffer(bytes(x), dtype=np.uint8))}
        if isinstance(x, tuple):
            return {"$tuple": [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, (set, frozenset)):
            return {"$set": [walk(v, f"{where}{{}}") for v in sorted(x, key=repr)]}
        if isinstance(x, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith(TAG) for k in x):
                return {k: walk(v, f"{where}.{k}" if where else k) for k, v in x.items()}
            return {"$dict": [[walk(k, f"{where} key"), walk(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        kind = "a function" if callable(x) and not isinstance(x, type) else f"a {type(x).__name__}"
        raise TypeError(f"state: cannot store {kind} as plain data (at {where or 'top level'})")

    structure = walk(tree, "")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_entry(TREE), json.dumps({"format": MAGIC, "tree": structure}))
        for i, array in enumerate(arrays):
            entry = io.BytesIO()
            np.save(entry, array, allow_pickle=False)
            zf.writestr(_entry(f"{i}.npy"), entry.getvalue())
    return buf.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    """An archive entry with a fixed timestamp: writestr would stamp the wall clock, and equal states must give
    equal bytes (checkpoint digests and tests compare them)."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def decode(data: bytes) -> Any:
    """The tree :func:`encode` wrote; tensors come back as torch tensors. Raises :class:`StateFormatError` on
    anything else, before building anything from it."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        head = json.loads(zf.read(TREE))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as e:
        if _is_pickle(data):
            raise StateFormatError(PICKLED) from None
        raise StateFormatError(f"not a dynalign state ({MAGIC}): {type(e).__name__}") from None
    if not isinstance(head, dict) or head.get("format") != MAGIC:
        raise StateFormatError(f"not a dynalign state: format {head.get('format') if isinstance(head, dict) else head!r}, "
                               f"expected {MAGIC}")
    names = set(zf.namelist())

    def array(index: Any) -> np.ndarray:
        name = f"{index}.npy"
        if not isinstance(index, int) or name not in names:
            raise StateFormatError(f"state names a missing array {index!r}")
        try:
            return np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
        except ValueError as e:  # an object array, or not an .npy at all
            raise StateFormatError(f"state array {index}: {e}") from None

    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1 and next(iter(x)).startswith(TAG):
            (tag, value), = x.items()
            if tag == "$tensor":
                return torch.from_numpy(array(value).copy())
            if tag == "$array":
                return array(value)
            if tag == "$bytes":
                return array(value).tobytes()
            if tag == "$tuple":
                return tuple(walk(v) for v in value)
            if tag == "$set":
                return {walk(v) for v in value}
            if tag == "$dict":
                return {walk(k): walk(v) for k, v in value}
            raise StateFormatError(f"state has an unknown tag {tag!r}")
        return {k: walk(v) for k, v in x.items()}

    try:
        return walk(head["tree"])
    except (TypeError, KeyError) as e:  # e.g. an unhashable key or a malformed tag: tampered with
        raise StateFormatError(f"malformed dynalign state: {type(e).__name__}: {e}") from None


def _is_pickle(data: bytes) -> bool:
    """A raw pickle (protocol 2+ starts with PROTO) or ``torch.save``'s zip, whose records hold one."""
    if data[:1] == b"\x80":
        return True
    try:
        return any(name.endswith(".pkl") for name in zipfile.ZipFile(io.BytesIO(data)).namelist())
    except zipfile.BadZipFile:
        return False
