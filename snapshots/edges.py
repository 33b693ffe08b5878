"""The undirected, weighted edges of one network, keyed for the per-event hot path.

Most events are interactions, so adding an edge is two dictionary operations on one int key rather than a
tuple, and everything array-shaped (the canonical edge order of a snapshot, a checkpoint's columns, expiry) is
built only when asked for, vectorised. The store owns the key packing: nothing outside it relies on it but the
edge index it hands over.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# An undirected edge is one int key, (low index << 32) | high index: int keys hash faster than tuples and turn
# into an edge_index with two vectorised shifts. Registries stay far below 2**31 nodes, so keys fit in int64.
_LOW_BITS = (1 << 32) - 1


class EdgeStore:
    """Weight and latest interaction time per undirected edge; both dicts share keys and insertion order."""

    __slots__ = ("weight", "time")

    def __init__(self) -> None:
        self.weight: dict[int, float] = {}
        self.time: dict[int, float] = {}

    def add(self, a: int, b: int, weight: float, time: float) -> None:
        """A new edge gets ``weight``; an existing one grows by it (repeated interactions strengthen a tie)."""
        key = (a << 32) | b if a < b else (b << 32) | a  # _edge_key, inlined: this runs once per interaction
        weights = self.weight
        old = weights.get(key)
        if old is None:
            weights[key] = weight
            self.time[key] = time
        else:
            weights[key] = old + weight
            # max, not last: a late event must not make a tie look older than it is
            if time > self.time[key]:
                self.time[key] = time

    def remove(self, a: int, b: int) -> bool:
        """Delete the edge whatever its weight; False if there was none."""
        key = _edge_key(a, b)
        if self.weight.pop(key, None) is None:
            return False
        del self.time[key]
        return True

    def get(self, a: int, b: int) -> tuple[float, float] | None:
        """``(weight, last_time)`` of the edge, or ``None``."""
        key = _edge_key(a, b)
        weight = self.weight.get(key)
        return None if weight is None else (weight, self.time[key])

    def expire(self, before: float) -> np.ndarray:
        """Drop every edge last touched before ``before``; returns their ends, ``(2, expired)`` int64."""
        if not self.time:
            return np.zeros((2, 0), np.int64)
        keys, _, times = self.arrays()
        old = keys[times < before]
        for key in old.tolist():
            del self.weight[key]
            del self.time[key]
        return _ends(old)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge keys, weights and last times in insertion order."""
        count = len(self.weight)
        return (np.fromiter(self.weight.keys(), np.int64, count),
                np.fromiter(self.weight.values(), np.float64, count),
                np.fromiter(self.time.values(), np.float64, count))

    def canonical(self) -> tuple[np.ndarray, np.ndarray]:
        """``edge_index`` int64 ``(2, E)`` (each edge once, ``u < v``) and float32 weights, sorted by ``(u, v)``:
        equal states give equal arrays, whatever the history."""
        keys, weights, _ = self.arrays()
        order = np.argsort(keys)
        return _ends(keys[order]), weights[order].astype(np.float32)

    def to_state(self) -> dict[str, Any]:
        keys, weights, times = self.arrays()
        return {"edge_keys": keys, "edge_weight": weights, "edge_time": times}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EdgeStore:
        edges = cls()
        keys = np.asarray(state["edge_keys"], np.int64).tolist()
        edges.weight = dict(zip(keys, np.asarray(state["edge_weight"], np.float64).tolist()))
        edges.time = dict(zip(keys, np.asarray(state["edge_time"], np.float64).tolist()))
        return edges


def _edge_key(a: int, b: int) -> int:
    return (a << 32) | b if a < b else (b << 32) | a


def _ends(keys: np.ndarray) -> np.ndarray:
    return np.stack([keys >> 32, keys & _LOW_BITS])
