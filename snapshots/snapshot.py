"""Immutable snapshots: the hand-off from the temporal graph state to the aligner.

A :class:`Snapshot` is everything the aligner may look at for one cut: every network's graph (edges,
attributes, which nodes are alive) and the known anchors between networks, indexed densely by the stable
node registry, so that index ``i`` of network ``n`` means the same account in every snapshot. Arrays are numpy
(the aligner turns them into tensors); nothing here knows about torch.

>>> import numpy as np
>>> net = NetworkSnapshot("a", ("x", "y", "z"), np.array([[0], [1]]), np.ones(1, np.float32),
...                       np.array([True, True, False]))
>>> net.num_nodes, net.num_edges, net.index_of("y")
(3, 1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class NetworkSnapshot:
    """One network at one cut.

    ``edge_index`` is int64 ``(2, E)`` with each undirected edge once (``u < v``); ``edge_weight`` float32 ``(E,)``;
    ``alive`` marks nodes that currently have an edge, attributes or an anchor; ``attrs`` is float32
    ``(num_nodes, d)`` or ``None`` when the network has no attributes; ``attr_names`` names the columns when
    attributes came as named fields. ``changed`` lists node indices whose edges, attributes or anchors changed
    since the previous snapshot (all alive nodes in the first one).
    """

    name: str
    node_ids: tuple[str, ...]
    edge_index: np.ndarray
    edge_weight: np.ndarray
    alive: np.ndarray
    attrs: np.ndarray | None = None
    attr_names: tuple[str, ...] | None = None
    changed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def index_of(self, node_id: str) -> int:
        """Dense index of an external node id; raises ``KeyError`` if the network never saw it."""
        index = self._index.get(node_id)
        if index is None:
            raise KeyError(f"node {node_id!r} is unknown in network {self.name!r}")
        return index

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {node: i for i, node in enumerate(self.node_ids)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def pair_key(net_a: str, net_b: str) -> tuple[str, str]:
    """The canonical (sorted) key of an unordered pair of networks.

    >>> pair_key("offline", "online")
    ('offline', 'online')
    >>> pair_key("online", "offline")
    ('offline', 'online')
    """
    return (net_a, net_b) if net_a <= net_b else (net_b, net_a)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A cut of all networks. ``anchors[(a, b)]`` (with ``a < b``) is int64 ``(k, 2)``: column 0 indexes network
    ``a``, column 1 network ``b``. ``events`` counts events applied since the previous snapshot. ``arrived``
    counts the events offered to the cutter before this cut (duplicates included): the service logs every
    offered event, so lines ``[previous.arrived, arrived)`` of the event log are the ones that arrived for it."""

    id: int
    start_time: float
    end_time: float
    networks: dict[str, NetworkSnapshot]
    anchors: dict[tuple[str, str], np.ndarray]
    events: int = 0
    arrived: int = 0

    def anchors_between(self, net_a: str, net_b: str) -> np.ndarray:
        """Anchor index pairs with column 0 in ``net_a`` and column 1 in ``net_b`` (either order of names)."""
        pairs = self.anchors.get(pair_key(net_a, net_b))
        if pairs is None:
            return np.zeros((0, 2), np.int64)
        return pairs if net_a <= net_b else pairs[:, ::-1].copy()
