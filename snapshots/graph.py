"""The live state of every network, folded event by event, from which snapshots are cut.

Events arrive one at a time and far more often than snapshots are cut, so :meth:`TemporalGraphState.apply` does
O(1) dictionary work per event and all array building is deferred to :meth:`TemporalGraphState.snapshot`, which
is vectorised (O(E log E) numpy for the canonical edge order, no per-edge Python loop). Each network's edges
(:mod:`snapshots.edges`) and attributes (:mod:`snapshots.attributes`), and the anchors between networks
(:mod:`snapshots.anchors`), live in their own stores; this module gives each op its meaning over them and
registers nodes within :class:`snapshots.limits.GraphLimits`.

>>> from stream.events import Event
>>> g = TemporalGraphState()
>>> for e in [Event("add_edge", 1.0, "a", "x", "y"), Event("add_edge", 2.0, "a", "y", "x", weight=2.0),
...           Event("set_attr", 3.0, "b", "p", attrs=(0.5, 1.5)), Event("add_anchor", 4.0, "a", "z", "p", to="b")]:
...     g.apply(e)
>>> s = g.snapshot(1, 0.0, 10.0, 4)
>>> s.networks["a"].edge_index.tolist(), s.networks["a"].edge_weight.tolist(), s.networks["a"].alive.tolist()
([[0], [1]], [3.0], [True, True, True])
>>> s.anchors_between("b", "a").tolist(), s.networks["b"].attrs.tolist()
([[0, 2]], [[0.5, 1.5]])
"""

from __future__ import annotations

from typing import Any, Collection

import numpy as np

from snapshots.anchors import Anchors
from snapshots.attributes import AttrForm, AttributeStore
from snapshots.edges import EdgeStore
from snapshots.limits import DEFAULT_GRAPH_LIMITS, GraphLimits, StateConflict
from snapshots.registry import NodeRegistry
from snapshots.snapshot import NetworkSnapshot, Snapshot, pair_key
from stream.events import ADD_ANCHOR, ADD_EDGE, OPS, REMOVE_ANCHOR, REMOVE_EDGE, SET_ATTR, Event


class _Network:
    """One network's mutable state: its registry, edges and attributes, and the nodes changed since the last cut."""

    __slots__ = ("registry", "known", "edges", "attributes", "changed")

    def __init__(self, registry: NodeRegistry | None = None, edges: EdgeStore | None = None,
                 attributes: AttributeStore | None = None, changed: set[int] | None = None):
        self.registry = registry if registry is not None else NodeRegistry()
        self.known = self.registry.known  # read before registry.index: two lookups per edge event, most hit
        self.edges = edges if edges is not None else EdgeStore()
        self.attributes = attributes if attributes is not None else AttributeStore()
        self.changed: set[int] = changed if changed is not None else set()

    def snapshot(self, name: str, anchored: Collection[np.ndarray]) -> NetworkSnapshot:
        num_nodes = len(self.registry)
        edge_index, weights = self.edges.canonical()
        alive = np.zeros(num_nodes, bool)
        alive[edge_index[0]] = True
        alive[edge_index[1]] = True
        self.attributes.mark_alive(alive)
        for indices in anchored:
            alive[indices] = True
        return NetworkSnapshot(name=name, node_ids=self.registry.ids, edge_index=edge_index, edge_weight=weights,
                               alive=alive, attrs=self.attributes.matrix(num_nodes), attr_names=self.attributes.names,
                               changed=_sorted_indices(self.changed))

    def to_state(self) -> dict[str, Any]:
        return {"registry": self.registry.to_state(), **self.edges.to_state(),
                **self.attributes.to_state(len(self.registry)), "changed": _sorted_indices(self.changed)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Network:
        return cls(NodeRegistry.from_state(state["registry"]), EdgeStore.from_state(state),
                   AttributeStore.from_state(state), set(np.asarray(state["changed"], np.int64).tolist()))


class TemporalGraphState:
    """All networks as of the events applied so far, one :class:`NodeRegistry` per network.

    Semantics of :meth:`apply`, per op:

    - ``add_edge``: edges are undirected. A new edge gets the event's weight; an existing edge's weight grows by
      it (repeated interactions strengthen a tie). Each edge remembers the latest event time that touched it.
    - ``remove_edge``: deletes the edge whatever its weight. Removing a missing edge changes nothing and is
      counted in ``stats["remove_missing"]``.
    - ``set_attr``: a network takes attributes in one form, fixed by its first ``set_attr``. Vector form replaces
      the node's whole vector; the attribute matrix is as wide as the longest vector seen in the network and
      shorter vectors are zero-padded. Named form updates only the named fields (the node's other fields keep
      their value, fields never set are 0); the network's schema maps names to columns in order of first
      appearance. A ``set_attr`` of the other form raises :class:`StateConflict` and changes nothing.
    - ``add_anchor`` / ``remove_anchor``: anchors join ``(net, u)`` and ``(to, v)``, stored per unordered
      network pair (:func:`pair_key`). Adding an existing anchor changes nothing. Anchors are one-to-one: if
      either node already has a different partner in the other network, that old anchor is dropped (counted in
      ``stats["anchor_replaced"]``, once per dropped anchor). Removing a missing anchor changes nothing and is
      counted in ``stats["remove_anchor_missing"]``.

    Every applied event that adds something registers the nodes it names (and creates the networks it names), so
    indices only depend on the order of events; a removal of something that is not there registers nothing (a
    stream of them must not grow every feature matrix). Growth beyond :class:`GraphLimits` raises
    :class:`StateConflict` and changes nothing. A node is *alive* while it has an edge, attributes or an
    anchor. ``changed`` in each snapshot lists the nodes whose edges, attributes or anchors an event modified
    since the previous snapshot (including nodes that lost an edge or were displaced from an anchor).
    """

    def __init__(self, limits: GraphLimits = DEFAULT_GRAPH_LIMITS) -> None:
        self.limits = limits
        self._networks: dict[str, _Network] = {}
        self._anchors = Anchors()
        self.stats: dict[str, int] = dict.fromkeys(
            (*OPS, "remove_missing", "remove_anchor_missing", "anchor_replaced", "conflicts"), 0)
        self._handlers = {ADD_EDGE: self._add_edge, REMOVE_EDGE: self._remove_edge, SET_ATTR: self._set_attr,
                          ADD_ANCHOR: self._add_anchor, REMOVE_ANCHOR: self._remove_anchor}

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(sorted(self._networks))

    def registry(self, net: str) -> NodeRegistry:
        """The node registry of ``net`` (``KeyError`` if no event has named it)."""
        return self._networks[net].registry

    def edge(self, net: str, u: str, v: str) -> tuple[float, float] | None:
        """``(weight, last_time)`` of the undirected edge ``u``–``v``, or ``None``."""
        network = self._networks.get(net)
        if network is None:
            return None
        a, b = network.registry.get(u), network.registry.get(v)
        if a is None or b is None:
            return None
        return network.edges.get(a, b)

    def apply(self, event: Event) -> None:
        """Fold one event into the state (see the class docstring); raises :class:`StateConflict`."""
        handler = self._handlers.get(event.op)
        if handler is None:
            raise ValueError(f"unknown op {event.op!r}")
        handler(event)
        self.stats[event.op] += 1

    def snapshot(self, id: int, start_time: float, end_time: float, events: int) -> Snapshot:
        """The immutable hand-off of the current state (fresh arrays); resets every network's changed set."""
        anchors, anchored = self._anchors.arrays()
        networks = {name: self._networks[name].snapshot(name, anchored.get(name, ())) for name in self.networks}
        for network in self._networks.values():
            network.changed.clear()
        return Snapshot(id=id, start_time=start_time, end_time=end_time, networks=networks, anchors=anchors,
                        events=events)

    def expire(self, before: float) -> int:
        """Drop every edge whose latest interaction is older than ``before`` (event time), marking its ends
        changed, as a ``remove_edge`` would; returns how many expired."""
        expired = 0
        for network in self._networks.values():
            ends = network.edges.expire(before)
            network.changed.update(ends.ravel().tolist())
            expired += ends.shape[1]
        return expired

    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: nested dicts/lists of plain values and numpy arrays."""
        return {
            "networks": {name: network.to_state() for name, network in self._networks.items()},
            "anchors": self._anchors.to_state(),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], limits: GraphLimits = DEFAULT_GRAPH_LIMITS) -> TemporalGraphState:
        """The state of :meth:`to_state`; ``limits`` bound its growth from here on (not what it holds already)."""
        graph = cls(limits)
        graph._networks = {name: _Network.from_state(network) for name, network in state["networks"].items()}
        graph._anchors = Anchors.from_state(state["anchors"])
        graph.stats.update(state["stats"])
        return graph

    def _network(self, name: str) -> _Network:
        network = self._networks.get(name)
        if network is None:
            network = self._networks[name] = _Network()
        return network

    def _admit(self, nodes: dict[str, tuple[str, ...]]) -> None:
        """Raise :class:`StateConflict` if registering ``nodes`` (node ids per network) would pass a limit; the
        slow path only: callers skip it when every network and node is known."""
        networks = self._networks
        self.limits.admit_networks(len(networks), [name for name in nodes if name not in networks])
        if self.limits.max_nodes_per_network is None:
            return
        for name, ids in nodes.items():
            network = networks.get(name)
            known, count = (network.known, len(network.registry)) if network is not None else ({}, 0)
            self.limits.admit_nodes(name, count, [node for node in dict.fromkeys(ids) if node not in known])

    def _add_edge(self, event: Event) -> None:
        # The hottest code of ingestion (most events are interactions): locals on purpose.
        u, v = event.u, event.v
        assert v is not None  # an edge event has both ends (parse_event requires them)
        network = self._networks.get(event.net)
        a = b = None
        if network is not None:
            known = network.known
            a, b = known.get(u), known.get(v)
        if network is None or a is None or b is None:  # a new node (or network): in event order, as the registry needs
            self._admit({event.net: (u, v)})
            network = network or self._network(event.net)
            a, b = network.registry.index(u), network.registry.index(v)
        network.edges.add(a, b, event.weight, event.time)
        changed = network.changed
        changed.add(a)
        changed.add(b)

    def _remove_edge(self, event: Event) -> None:
        v = event.v
        assert v is not None  # an edge event has both ends (parse_event requires them)
        network = self._networks.get(event.net)
        a = b = None
        if network is not None:
            a, b = network.known.get(event.u), network.known.get(v)
        if network is None or a is None or b is None or not network.edges.remove(a, b):
            self.stats["remove_missing"] += 1
            return
        network.changed.add(a)
        network.changed.add(b)

    def _set_attr(self, event: Event) -> None:
        form = AttrForm.NAMED if event.named_attrs else AttrForm.VECTOR
        existing = self._networks.get(event.net)
        if existing is not None and existing.attributes.form not in (None, form):
            self.stats["conflicts"] += 1
            raise StateConflict(
                f"set_attr: network {event.net!r} takes {existing.attributes.form} attributes (fixed by its first "
                f"set_attr), got {form} attributes for node {event.u!r}")
        attrs: Any = event.attrs or ()
        width = len(attrs) if existing is None else existing.attributes.width_after(form, attrs)
        self.limits.admit_attr_width(event.net, event.u, width)
        if existing is None or event.u not in existing.known:
            self._admit({event.net: (event.u,)})
        network = self._network(event.net)
        index = network.registry.index(event.u)
        network.attributes.set(index, form, attrs)
        network.changed.add(index)

    def _anchor_ends(self, event: Event) -> tuple[tuple[str, str], _Network, int, _Network, int]:
        """Pair key, then (network, index) of its first and of its second end, registering both."""
        to, v = event.to, event.v
        assert to is not None and v is not None  # an anchor event names both ends (parse_event requires them)
        key = pair_key(event.net, to)
        here, there = self._networks.get(event.net), self._networks.get(to)
        if here is None or there is None or event.u not in here.known or v not in there.known:
            self._admit({event.net: (event.u,), to: (v,)})
        if key not in self._anchors:
            self.limits.admit_network_pair(len(self._anchors), key)
        here, there = self._network(event.net), self._network(to)
        index_here, index_there = here.registry.index(event.u), there.registry.index(v)
        if event.net == key[0]:
            return key, here, index_here, there, index_there
        return key, there, index_there, here, index_here

    def _add_anchor(self, event: Event) -> None:
        key, first, a, second, b = self._anchor_ends(event)
        displaced = self._anchors.pair(key).add(a, b)
        if displaced is None:
            return
        old_b, old_a = displaced
        if old_b is not None:
            second.changed.add(old_b)
            self.stats["anchor_replaced"] += 1
        if old_a is not None:
            first.changed.add(old_a)
            self.stats["anchor_replaced"] += 1
        first.changed.add(a)
        second.changed.add(b)

    def _remove_anchor(self, event: Event) -> None:
        to, v = event.to, event.v
        assert to is not None and v is not None  # an anchor event names both ends (parse_event requires them)
        key = pair_key(event.net, to)
        pair = self._anchors.get(key)
        if pair is not None:  # a pair with anchors: both networks exist
            first, second = self._networks[key[0]], self._networks[key[1]]
            here, there = (event.u, v) if event.net == key[0] else (v, event.u)
            a, b = first.known.get(here), second.known.get(there)
        if pair is None or a is None or b is None or not pair.remove(a, b):
            self.stats["remove_anchor_missing"] += 1
            return
        first.changed.add(a)
        second.changed.add(b)


def _sorted_indices(indices: set[int]) -> np.ndarray:
    out = np.fromiter(indices, np.int64, len(indices))
    out.sort()
    return out
