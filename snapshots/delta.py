"""Row-level differences between two versions of a table, so stored history grows with the changes.

Consecutive snapshots of a network (and consecutive alignment versions of a pair) mostly repeat each other:
a window adds a few hundred edges to a graph of tens of thousands. Both the snapshot store and the alignment
history therefore write a full *base* now and then and, in between, only what changed against the previous
version. Two shapes of table occur, hence two pairs of functions:

- *keyed*: sorted unique int64 keys with value rows (edges keyed ``u << 32 | v``, anchors, top-k rows keyed by
  source node): the difference is the keys removed plus the rows added or changed;
- *dense*: arrays indexed by node whose later version may be longer (registries only grow): the difference
  is the indices whose row differs, the old array counting as zero/False beyond its end.

>>> old_k, new_k = np.array([1, 2, 5]), np.array([2, 5, 7])
>>> removed, keys, (vals,) = diff_keyed(old_k, [np.array([1., 2., 5.])], new_k, [np.array([2., 6., 7.])])
>>> removed.tolist(), keys.tolist(), vals.tolist()
([1], [5, 7], [6.0, 7.0])
>>> k, (v,) = patch_keyed(old_k, [np.array([1., 2., 5.])], removed, keys, [vals])
>>> k.tolist(), v.tolist()
([2, 5, 7], [2.0, 6.0, 7.0])
>>> idx, rows = diff_dense(np.array([True, False]), np.array([True, True, False]))
>>> idx.tolist(), patch_dense(np.array([True, False]), 3, idx, rows).tolist()
([1], [True, True, False])
"""

from __future__ import annotations

import numpy as np


def diff_keyed(old_keys: np.ndarray, old_values: list[np.ndarray], new_keys: np.ndarray,
               new_values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(removed keys, upserted keys, upserted value rows per column)`` turning old into new (keys sorted)."""
    removed = np.setdiff1d(old_keys, new_keys, assume_unique=True)
    in_old = np.isin(new_keys, old_keys, assume_unique=True)
    changed = ~in_old
    if in_old.any():
        # Rows of kept keys: compare with the old row of the same key (both key arrays are sorted).
        old_pos = np.searchsorted(old_keys, new_keys[in_old])
        same = np.ones(int(in_old.sum()), bool)
        for old, new in zip(old_values, new_values):
            a, b = old[old_pos], new[in_old]
            same &= (a == b) if a.ndim == 1 else (a == b).all(axis=tuple(range(1, a.ndim)))
        changed[np.flatnonzero(in_old)[~same]] = True
    return removed, new_keys[changed], [values[changed] for values in new_values]


def patch_keyed(old_keys: np.ndarray, old_values: list[np.ndarray], removed: np.ndarray, keys: np.ndarray,
                values: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The inverse of :func:`diff_keyed`: apply ``removed`` and the upserted rows to the old table."""
    keep = ~np.isin(old_keys, np.concatenate([removed, keys]), assume_unique=False)
    merged = np.concatenate([old_keys[keep], keys])
    order = np.argsort(merged, kind="stable")
    return merged[order], [np.concatenate([old[keep], new])[order] for old, new in zip(old_values, values)]


def diff_dense(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, rows)`` where ``new`` differs from ``old`` padded with zeros to ``new``'s length."""
    padded = _padded(old, new.shape)
    differs = padded != new
    if differs.ndim > 1:
        differs = differs.any(axis=tuple(range(1, differs.ndim)))
    idx = np.flatnonzero(differs)
    return idx, new[idx]


def patch_dense(old: np.ndarray, length: int, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The inverse of :func:`diff_dense`: ``old`` padded to ``length`` rows with ``rows`` written at ``indices``."""
    out = _padded(old, (length, *old.shape[1:]))
    out[indices] = rows
    return out


def _padded(old: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, old.dtype)
    n = min(len(old), shape[0])
    out[:n] = old[:n]
    return out
