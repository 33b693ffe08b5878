"""npz archives whose bytes depend only on their arrays, so equal content gives an equal sha256.

``np.savez`` stamps every entry with the wall clock, so two encodings of one snapshot differ by a timestamp and
a sha256 cannot tell "the same snapshot, written again" from "another snapshot". With a fixed entry time, a
snapshot rebuilt from the event log (:mod:`snapshots.repair`) is proven identical to the one it replaces by the
digest the manifest recorded. The files stay ordinary npz archives: ``np.load(..., allow_pickle=False)`` reads
them.

>>> import io
>>> a = npz_bytes({"x": np.arange(3)}, compressed=True)
>>> a == npz_bytes({"x": np.arange(3)}, compressed=True)
True
>>> np.load(io.BytesIO(a), allow_pickle=False)["x"].tolist()
[0, 1, 2]
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    """``arrays`` as the bytes of an npz archive (entries in the given order, at :data:`FIXED_TIME`); object
    arrays are refused, as they would need pickle to load."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            info.compress_type = method
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def json_array(obj: Any) -> np.ndarray:
    """``obj`` as compact JSON in a uint8 array: how structure travels inside an npz."""
    return np.frombuffer(json.dumps(obj, separators=(",", ":")).encode("utf-8"), np.uint8)

