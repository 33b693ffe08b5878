"""Known anchors between networks: one-to-one pairs of node indices, per unordered network pair.

An anchor says two accounts are the same entity, so each node has at most one partner in each other network;
the pairs are indexed both ways so that replacing a partner (either end) is O(1) per event. Pairs are keyed by
:func:`snapshots.snapshot.pair_key`, so column 0 always indexes the pair's first network.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


class AnchorPair:
    """One-to-one anchors between the networks of a pair key ``(first, second)``, indexed both ways."""

    __slots__ = ("forward", "backward")

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self.forward: dict[int, int] = dict(pairs)  # index in `first` -> index in `second`
        self.backward: dict[int, int] = {b: a for a, b in self.forward.items()}

    def add(self, a: int, b: int) -> tuple[int | None, int | None] | None:
        """Anchor ``a`` (in first) to ``b`` (in second), dropping the anchors either had with another node;
        returns ``(a's old partner, b's old partner)``, or ``None`` if the anchor existed already."""
        if self.forward.get(a) == b:
            return None
        old_b = self.forward.pop(a, None)
        if old_b is not None:
            del self.backward[old_b]
        old_a = self.backward.pop(b, None)
        if old_a is not None:
            del self.forward[old_a]
        self.forward[a] = b
        self.backward[b] = a
        return old_b, old_a

    def remove(self, a: int, b: int) -> bool:
        """Drop the anchor ``a``–``b``; False if there was none."""
        if self.forward.get(a) != b:
            return False
        del self.forward[a]
        del self.backward[b]
        return True

    def pairs(self) -> np.ndarray:
        """``(k, 2)`` int64, sorted by column 0 (which is unique, so this is the lexicographic order)."""
        count = len(self.forward)
        first = np.fromiter(self.forward.keys(), np.int64, count)
        second = np.fromiter(self.forward.values(), np.int64, count)
        order = np.argsort(first)
        return np.stack([first[order], second[order]], axis=1).reshape(count, 2)


class Anchors:
    """Every network pair's :class:`AnchorPair`, by pair key."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], AnchorPair] = {}

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, key: object) -> bool:
        return key in self._pairs

    def get(self, key: tuple[str, str]) -> AnchorPair | None:
        return self._pairs.get(key)

    def pair(self, key: tuple[str, str]) -> AnchorPair:
        """The pair's anchors, created empty on first use."""
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = AnchorPair()
        return pair

    def arrays(self) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, list[np.ndarray]]]:
        """Fresh ``(k, 2)`` pairs per key in key order, and per network the indices anchored in it."""
        anchors: dict[tuple[str, str], np.ndarray] = {}
        anchored: dict[str, list[np.ndarray]] = {}
        for key in sorted(self._pairs):
            pairs = anchors[key] = self._pairs[key].pairs()
            anchored.setdefault(key[0], []).append(pairs[:, 0])
            anchored.setdefault(key[1], []).append(pairs[:, 1])
        return anchors, anchored

    def to_state(self) -> list[dict[str, Any]]:
        return [{"networks": list(key), "pairs": pair.pairs()} for key, pair in self._pairs.items()]

    @classmethod
    def from_state(cls, state: list[dict[str, Any]]) -> Anchors:
        anchors = cls()
        for entry in state:
            pairs = np.asarray(entry["pairs"], np.int64).reshape(-1, 2).tolist()
            anchors._pairs[tuple(entry["networks"])] = AnchorPair((a, b) for a, b in pairs)
        return anchors
