"""Stable external-id ↔ dense-index map for the nodes of one network.

The aligner keeps per-node state (embeddings, optimiser moments) in arrays indexed by position, so a node's
index must mean the same account in every snapshot. The registry is therefore append-only: an id gets the next
free index the first time it is seen and keeps it forever, even after the node loses all its edges.

>>> reg = NodeRegistry()
>>> reg.index("alice"), reg.index("bob"), reg.index("alice")
(0, 1, 0)
>>> reg.get("carol") is None, len(reg), reg.ids
(True, 2, ('alice', 'bob'))
>>> NodeRegistry.from_state(reg.to_state()).ids == reg.ids
True
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator


class NodeRegistry:
    """Append-only map from external node id (str) to dense int index ``0..len-1``."""

    def __init__(self, node_ids: Iterable[str] = ()):
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._ids_tuple: tuple[str, ...] | None = ()
        for node_id in node_ids:
            if node_id in self._index:
                raise ValueError(f"duplicate node id {node_id!r} in registry state")
            self.index(node_id)

    def index(self, node_id: str, create: bool = True) -> int:
        """The index of ``node_id``; a new id gets the next index unless ``create`` is false (then ``KeyError``)."""
        found = self._index.get(node_id)
        if found is not None:
            return found
        if not create:
            raise KeyError(f"unknown node id {node_id!r}")
        found = len(self._ids)
        self._ids.append(node_id)
        self._index[node_id] = found
        self._ids_tuple = None
        return found

    def get(self, node_id: str) -> int | None:
        return self._index.get(node_id)

    @property
    def known(self) -> dict[str, int]:
        """The live id → index map itself, for hot loops that look ids up (read it, never write it: new ids
        go through :meth:`index`)."""
        return self._index

    @property
    def ids(self) -> tuple[str, ...]:
        """All ids in index order (cached: snapshots ask for it every cut, nodes arrive far less often)."""
        if self._ids_tuple is None:
            self._ids_tuple = tuple(self._ids)
        return self._ids_tuple

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def to_state(self) -> dict[str, Any]:
        """JSON-able state; the list order is the index order."""
        return {"ids": list(self._ids)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NodeRegistry:
        return cls(state["ids"])
