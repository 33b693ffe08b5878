"""The live state of every network, folded event by event, from which snapshots are cut.

Events arrive one at a time and far more often than snapshots are cut, so :meth:`TemporalGraphState.apply` does
O(1) dictionary work per event and all array building is deferred to :meth:`TemporalGraphState.snapshot`, which
is vectorised (O(E log E) numpy for the canonical edge order, no per-edge Python loop).

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

from dataclasses import dataclass
from typing import Any, Collection

import numpy as np

from snapshots.registry import NodeRegistry
from snapshots.snapshot import NetworkSnapshot, Snapshot, pair_key
from stream.events import ADD_ANCHOR, ADD_EDGE, OPS, REMOVE_ANCHOR, REMOVE_EDGE, SET_ATTR, Event

VECTOR_ATTRS = "vector"
NAMED_ATTRS = "named"

# An undirected edge is one int key, (low index << 32) | high index: int keys hash faster than tuples and turn
# into an edge_index with two vectorised shifts. Registries stay far below 2**31 nodes, so keys fit in int64.
_LOW_BITS = (1 << 32) - 1


class StateConflict(ValueError):
    """A valid event that contradicts the state it meets; ``reason`` goes to the dead-letter sink."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GraphLimits:
    """How far events may grow the state; an event that would go beyond raises :class:`StateConflict` (a dead
    letter naming the setting) and changes nothing. Each bound is a ``snapshots.`` setting; ``None``: no bound.

    Without them a few kilobytes of input cost gigabytes: every node is a row of every feature matrix, every
    attribute column a column of it, and every anchored network pair a pair to align at each snapshot.

    >>> g = TemporalGraphState(GraphLimits(max_nodes_per_network=2))
    >>> g.apply(Event("add_edge", 1.0, "a", "x", "y"))
    >>> g.apply(Event("add_edge", 1.0, "a", "y", "z"))
    Traceback (most recent call last):
    ...
    snapshots.graph.StateConflict: network 'a' has 2 nodes, snapshots.max_nodes_per_network (2): node 'z' not added
    """

    max_networks: int | None = 64
    max_network_pairs: int | None = 64  # network pairs with anchors: under pairs = "auto", each is aligned
    max_nodes_per_network: int | None = 2_000_000
    max_attr_width: int | None = 10_000  # attribute columns per network

    def __post_init__(self) -> None:
        for name in ("max_networks", "max_network_pairs", "max_nodes_per_network", "max_attr_width"):
            bound = getattr(self, name)
            if bound is not None and not (isinstance(bound, int) and not isinstance(bound, bool) and bound > 0):
                raise ValueError(f"{name} must be a positive integer or None, got {bound!r}")


NO_LIMITS = GraphLimits(None, None, None, None)


class _Network:
    """Mutable per-network state; edge dicts share keys and insertion order (they change together)."""

    __slots__ = ("registry", "known", "edge_weight", "edge_time", "attr_form", "attr_columns", "attr_width",
                 "attr_values", "has_attrs", "changed")

    def __init__(self, registry: NodeRegistry | None = None):
        self.registry = registry if registry is not None else NodeRegistry()
        self.known = self.registry.known  # read before registry.index: two lookups per edge event, most hit
        self.edge_weight: dict[int, float] = {}
        self.edge_time: dict[int, float] = {}
        self.attr_form: str | None = None
        self.attr_columns: dict[str, int] = {}  # named form only: the schema, in column order
        self.attr_width = 0
        # Capacity grows by doubling, so rows beyond the registry and columns beyond attr_width are zero spare.
        self.attr_values = np.zeros((0, 0), np.float32)
        self.has_attrs = np.zeros(0, bool)
        self.changed: set[int] = set()

    def reserve_attrs(self, rows: int, cols: int) -> None:
        cap_rows, cap_cols = self.attr_values.shape
        if rows <= cap_rows and cols <= cap_cols:
            return
        new_rows = cap_rows if rows <= cap_rows else max(rows, 2 * cap_rows)
        new_cols = cap_cols if cols <= cap_cols else max(cols, 2 * cap_cols)
        values = np.zeros((new_rows, new_cols), np.float32)
        values[:cap_rows, :cap_cols] = self.attr_values
        has_attrs = np.zeros(new_rows, bool)
        has_attrs[:cap_rows] = self.has_attrs
        self.attr_values, self.has_attrs = values, has_attrs

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge keys, weights and last times in insertion order."""
        count = len(self.edge_weight)
        return (np.fromiter(self.edge_weight.keys(), np.int64, count),
                np.fromiter(self.edge_weight.values(), np.float64, count),
                np.fromiter(self.edge_time.values(), np.float64, count))

    def snapshot(self, name: str, anchored: Collection[np.ndarray]) -> NetworkSnapshot:
        num_nodes = len(self.registry)
        keys, weights, _ = self.edge_arrays()
        order = np.argsort(keys)  # canonical (u, v) order: equal states give equal arrays, whatever the history
        keys = keys[order]
        edge_index = np.stack([keys >> 32, keys & _LOW_BITS])
        alive = np.zeros(num_nodes, bool)
        alive[edge_index[0]] = True
        alive[edge_index[1]] = True
        rows = min(num_nodes, len(self.has_attrs))
        alive[:rows] |= self.has_attrs[:rows]
        for indices in anchored:
            alive[indices] = True
        attrs = None
        if self.attr_form is not None:
            attrs = np.zeros((num_nodes, self.attr_width), np.float32)
            attrs[:rows] = self.attr_values[:rows, : self.attr_width]
        return NetworkSnapshot(
            name=name,
            node_ids=self.registry.ids,
            edge_index=edge_index,
            edge_weight=weights[order].astype(np.float32),
            alive=alive,
            attrs=attrs,
            attr_names=tuple(self.attr_columns) if self.attr_form == NAMED_ATTRS else None,
            changed=_sorted_indices(self.changed),
        )

    def to_state(self) -> dict[str, Any]:
        keys, weights, times = self.edge_arrays()
        rows = min(len(self.registry), len(self.has_attrs))
        return {
            "registry": self.registry.to_state(),
            "edge_keys": keys,
            "edge_weight": weights,
            "edge_time": times,
            "attr_form": self.attr_form,
            "attr_names": list(self.attr_columns),
            "attr_width": self.attr_width,
            "attr_values": self.attr_values[:rows, : self.attr_width].copy(),
            "has_attrs": self.has_attrs[:rows].copy(),
            "changed": _sorted_indices(self.changed),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Network:
        net = cls(NodeRegistry.from_state(state["registry"]))
        keys = np.asarray(state["edge_keys"], np.int64).tolist()
        net.edge_weight = dict(zip(keys, np.asarray(state["edge_weight"], np.float64).tolist()))
        net.edge_time = dict(zip(keys, np.asarray(state["edge_time"], np.float64).tolist()))
        net.attr_form = state["attr_form"]
        net.attr_columns = {name: column for column, name in enumerate(state["attr_names"])}
        net.attr_width = int(state["attr_width"])
        net.has_attrs = np.array(state["has_attrs"], bool)
        net.attr_values = np.array(state["attr_values"], np.float32).reshape(len(net.has_attrs), net.attr_width)
        net.changed = set(np.asarray(state["changed"], np.int64).tolist())
        return net


class _AnchorPair:
    """One-to-one anchors between the networks of a pair key ``(first, second)``, indexed both ways."""

    __slots__ = ("forward", "backward")

    def __init__(self) -> None:
        self.forward: dict[int, int] = {}  # index in `first` -> index in `second`
        self.backward: dict[int, int] = {}

    def pairs(self) -> np.ndarray:
        """``(k, 2)`` int64, sorted by column 0 (which is unique, so this is the lexicographic order)."""
        count = len(self.forward)
        first = np.fromiter(self.forward.keys(), np.int64, count)
        second = np.fromiter(self.forward.values(), np.int64, count)
        order = np.argsort(first)
        return np.stack([first[order], second[order]], axis=1).reshape(count, 2)


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

    def __init__(self, limits: GraphLimits = GraphLimits()) -> None:
        self.limits = limits
        self._networks: dict[str, _Network] = {}
        self._anchors: dict[tuple[str, str], _AnchorPair] = {}
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
        key = _edge_key(a, b)
        weight = network.edge_weight.get(key)
        return None if weight is None else (weight, network.edge_time[key])

    def apply(self, event: Event) -> None:
        """Fold one event into the state (see the class docstring); raises :class:`StateConflict`."""
        handler = self._handlers.get(event.op)
        if handler is None:
            raise ValueError(f"unknown op {event.op!r}")
        handler(event)
        self.stats[event.op] += 1

    def snapshot(self, id: int, start_time: float, end_time: float, events: int) -> Snapshot:
        """The immutable hand-off of the current state (fresh arrays); resets every network's changed set."""
        anchors: dict[tuple[str, str], np.ndarray] = {}
        anchored: dict[str, list[np.ndarray]] = {}
        for key in sorted(self._anchors):
            pairs = self._anchors[key].pairs()
            anchors[key] = pairs
            anchored.setdefault(key[0], []).append(pairs[:, 0])
            anchored.setdefault(key[1], []).append(pairs[:, 1])
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
            if not network.edge_time:
                continue
            keys = np.fromiter(network.edge_time.keys(), dtype=np.int64, count=len(network.edge_time))
            times = np.fromiter(network.edge_time.values(), dtype=np.float64, count=len(network.edge_time))
            old = keys[times < before]
            for key in old.tolist():
                del network.edge_weight[key]
                del network.edge_time[key]
                network.changed.add(key >> 32)
                network.changed.add(key & _LOW_BITS)
            expired += len(old)
        return expired

    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: nested dicts/lists of plain values and numpy arrays."""
        return {
            "networks": {name: network.to_state() for name, network in self._networks.items()},
            "anchors": [{"networks": list(key), "pairs": pair.pairs()} for key, pair in self._anchors.items()],
            "stats": dict(self.stats),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], limits: GraphLimits = GraphLimits()) -> TemporalGraphState:
        """The state of :meth:`to_state`; ``limits`` bound its growth from here on (not what it holds already)."""
        graph = cls(limits)
        graph._networks = {name: _Network.from_state(network) for name, network in state["networks"].items()}
        for entry in state["anchors"]:
            pair = _AnchorPair()
            pair.forward = {a: b for a, b in np.asarray(entry["pairs"], np.int64).reshape(-1, 2).tolist()}
            pair.backward = {b: a for a, b in pair.forward.items()}
            graph._anchors[tuple(entry["networks"])] = pair
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
        limits, networks = self.limits, self._networks
        new_networks = [name for name in nodes if name not in networks]
        bound = limits.max_networks
        if new_networks and bound is not None and len(networks) + len(new_networks) > bound:
            raise StateConflict(f"{len(networks)} networks already, snapshots.max_networks ({bound}): network "
                                f"{new_networks[0]!r} not added")
        bound = limits.max_nodes_per_network
        if bound is None:
            return
        for name, ids in nodes.items():
            network = networks.get(name)
            known, count = (network.known, len(network.registry)) if network is not None else ({}, 0)
            new = [node for node in dict.fromkeys(ids) if node not in known]
            if new and count + len(new) > bound:
                raise StateConflict(f"network {name!r} has {count} nodes, snapshots.max_nodes_per_network "
                                    f"({bound}): node {new[-1]!r} not added")

    def _add_edge(self, event: Event) -> None:
        # The hottest code of ingestion (most events are interactions): locals and inlined helpers on purpose.
        network = self._networks.get(event.net)
        a = b = None
        if network is not None:
            known = network.known
            a, b = known.get(event.u), known.get(event.v)
        if a is None or b is None:  # a new node (or network): in event order, as the registry needs
            self._admit({event.net: (event.u, event.v)})
            network = network or self._network(event.net)
            a, b = network.registry.index(event.u), network.registry.index(event.v)
        key = (a << 32) | b if a < b else (b << 32) | a  # _edge_key, inlined
        weights = network.edge_weight
        weight = weights.get(key)
        if weight is None:
            weights[key] = event.weight
            network.edge_time[key] = event.time
        else:
            weights[key] = weight + event.weight
            # max, not last: a late event must not make a tie look older than it is
            if event.time > network.edge_time[key]:
                network.edge_time[key] = event.time
        changed = network.changed
        changed.add(a)
        changed.add(b)

    def _remove_edge(self, event: Event) -> None:
        network = self._networks.get(event.net)
        a = b = None
        if network is not None:
            a, b = network.known.get(event.u), network.known.get(event.v)
        if a is None or b is None or network.edge_weight.pop(_edge_key(a, b), None) is None:
            self.stats["remove_missing"] += 1
            return
        del network.edge_time[_edge_key(a, b)]
        network.changed.add(a)
        network.changed.add(b)

    def _set_attr(self, event: Event) -> None:
        form = NAMED_ATTRS if event.named_attrs else VECTOR_ATTRS
        existing = self._networks.get(event.net)
        if existing is not None and existing.attr_form not in (None, form):
            self.stats["conflicts"] += 1
            raise StateConflict(
                f"set_attr: network {event.net!r} takes {existing.attr_form} attributes (fixed by its first "
                f"set_attr), got {form} attributes for node {event.u!r}")
        attrs: Any = event.attrs or ()
        bound = self.limits.max_attr_width
        if bound is not None:
            if existing is None:
                width = len(attrs)
            elif form == NAMED_ATTRS:
                width = len(existing.attr_columns) + sum(name not in existing.attr_columns for name, _ in attrs)
            else:
                width = max(existing.attr_width, len(attrs))
            if width > bound:
                raise StateConflict(f"set_attr: node {event.u!r} would make network {event.net!r} {width} attribute "
                                    f"columns wide, more than snapshots.max_attr_width ({bound})")
        if existing is None or event.u not in existing.known:
            self._admit({event.net: (event.u,)})
        network = self._network(event.net)
        network.attr_form = form
        index = network.registry.index(event.u)
        if form == NAMED_ATTRS:
            columns = [network.attr_columns.setdefault(name, len(network.attr_columns)) for name, _ in attrs]
            network.attr_width = len(network.attr_columns)
            network.reserve_attrs(index + 1, network.attr_width)
            network.attr_values[index, columns] = [value for _, value in attrs]
        else:
            network.attr_width = max(network.attr_width, len(attrs))
            network.reserve_attrs(index + 1, network.attr_width)
            row = network.attr_values[index]
            row[: len(attrs)] = attrs
            row[len(attrs):] = 0.0
        network.has_attrs[index] = True
        network.changed.add(index)

    def _anchor_ends(self, event: Event) -> tuple[tuple[str, str], _Network, int, _Network, int]:
        """Pair key, then (network, index) of its first and of its second end, registering both."""
        key = pair_key(event.net, event.to)
        here, there = self._networks.get(event.net), self._networks.get(event.to)
        if here is None or there is None or event.u not in here.known or event.v not in there.known:
            self._admit({event.net: (event.u,), event.to: (event.v,)})
        bound = self.limits.max_network_pairs
        if key not in self._anchors and bound is not None and len(self._anchors) >= bound:
            raise StateConflict(f"{len(self._anchors)} network pairs have anchors already, "
                                f"snapshots.max_network_pairs ({bound}): no anchors between {key[0]!r} and {key[1]!r}")
        here, there = self._network(event.net), self._network(event.to)
        index_here, index_there = here.registry.index(event.u), there.registry.index(event.v)
        if event.net == key[0]:
            return key, here, index_here, there, index_there
        return key, there, index_there, here, index_here

    def _add_anchor(self, event: Event) -> None:
        key, first, a, second, b = self._anchor_ends(event)
        pair = self._anchors.get(key)
        if pair is None:
            pair = self._anchors[key] = _AnchorPair()
        if pair.forward.get(a) == b:
            return
        old_b = pair.forward.pop(a, None)
        if old_b is not None:
            del pair.backward[old_b]
            second.changed.add(old_b)
            self.stats["anchor_replaced"] += 1
        old_a = pair.backward.pop(b, None)
        if old_a is not None:
            del pair.forward[old_a]
            first.changed.add(old_a)
            self.stats["anchor_replaced"] += 1
        pair.forward[a] = b
        pair.backward[b] = a
        first.changed.add(a)
        second.changed.add(b)

    def _remove_anchor(self, event: Event) -> None:
        key = pair_key(event.net, event.to)
        pair = self._anchors.get(key)
        if pair is not None:  # a pair with anchors: both networks exist
            first, second = self._networks[key[0]], self._networks[key[1]]
            here, there = (event.u, event.v) if event.net == key[0] else (event.v, event.u)
            a, b = first.known.get(here), second.known.get(there)
        if pair is None or a is None or b is None or pair.forward.get(a) != b:
            self.stats["remove_anchor_missing"] += 1
            return
        del pair.forward[a]
        del pair.backward[b]
        first.changed.add(a)
        second.changed.add(b)


def _edge_key(a: int, b: int) -> int:
    return (a << 32) | b if a < b else (b << 32) | a


def _sorted_indices(indices: set[int]) -> np.ndarray:
    out = np.fromiter(indices, np.int64, len(indices))
    out.sort()
    return out
