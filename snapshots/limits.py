"""How far events may grow the graph state, and the error an event gets when it meets a bound or a
contradiction.

Apart from the graph because two readers need them without its internals: the cutter's policy offers every
bound as a ``snapshots.`` setting (defaulting to the values here), and the dead-letter sink stores the reason a
refused event carries. Each check words its own refusal, so the message names the setting that refused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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

    >>> from snapshots.graph import TemporalGraphState
    >>> from stream.events import Event
    >>> g = TemporalGraphState(GraphLimits(max_nodes_per_network=2))
    >>> g.apply(Event("add_edge", 1.0, "a", "x", "y"))
    >>> g.apply(Event("add_edge", 1.0, "a", "y", "z"))
    Traceback (most recent call last):
    ...
    snapshots.limits.StateConflict: network 'a' has 2 nodes, snapshots.max_nodes_per_network (2): node 'z' not added
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

    def admit_networks(self, count: int, new: Sequence[str]) -> None:
        """Refuse adding the networks ``new`` to ``count`` existing ones beyond ``max_networks``."""
        bound = self.max_networks
        if new and bound is not None and count + len(new) > bound:
            raise StateConflict(f"{count} networks already, snapshots.max_networks ({bound}): network "
                                f"{new[0]!r} not added")

    def admit_nodes(self, net: str, count: int, new: Sequence[str]) -> None:
        """Refuse registering the nodes ``new`` in ``net``, which has ``count``, beyond ``max_nodes_per_network``."""
        bound = self.max_nodes_per_network
        if new and bound is not None and count + len(new) > bound:
            raise StateConflict(f"network {net!r} has {count} nodes, snapshots.max_nodes_per_network "
                                f"({bound}): node {new[-1]!r} not added")

    def admit_attr_width(self, net: str, node: str, width: int) -> None:
        """Refuse a ``set_attr`` of ``node`` making ``net`` ``width`` columns wide, beyond ``max_attr_width``."""
        bound = self.max_attr_width
        if bound is not None and width > bound:
            raise StateConflict(f"set_attr: node {node!r} would make network {net!r} {width} attribute "
                                f"columns wide, more than snapshots.max_attr_width ({bound})")

    def admit_network_pair(self, count: int, key: tuple[str, str]) -> None:
        """Refuse the first anchor of pair ``key`` when ``count`` pairs have anchors, beyond ``max_network_pairs``."""
        bound = self.max_network_pairs
        if bound is not None and count >= bound:
            raise StateConflict(f"{count} network pairs have anchors already, "
                                f"snapshots.max_network_pairs ({bound}): no anchors between {key[0]!r} and {key[1]!r}")


DEFAULT_GRAPH_LIMITS = GraphLimits()  # the settings' defaults (frozen, so one instance serves every graph)
