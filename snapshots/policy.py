"""When the cutter cuts, and how much disorder, redelivery, clock error and growth it absorbs: its settings.

One frozen value, validated once where it is built (from the config, or from a checkpoint that recorded it),
so the cutter's parts read their settings without checking them, and a resumed run can be told exactly which
setting it may not change (:meth:`snapshots.cutter.SnapshotCutter.from_state`).
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from typing import Any

from snapshots.limits import GraphLimits


@dataclass(frozen=True)
class SnapshotPolicy:
    """When to cut, and how much disorder and redelivery to absorb.

    ``window_seconds``: cut when event time crosses a multiple of it (windows ``[k*W, (k+1)*W)``).
    ``every_events``: also (or instead) cut after this many applied events. ``lateness_seconds``: events up to
    this far behind the newest event time are still applied in time order. ``dedup_capacity``: how many recent
    event ids are remembered to drop redeliveries (oldest forgotten first). ``edge_ttl_seconds``: a sliding
    window over interactions: at every cut, edges whose latest interaction is older than this (in event time,
    before the cut's end) expire, as if removed, so old ties fade; ``None`` keeps them until ``remove_edge``.

    >>> SnapshotPolicy(window_seconds=None)
    Traceback (most recent call last):
    ...
    ValueError: SnapshotPolicy needs window_seconds or every_events (or both); both are None
    """

    window_seconds: float | None = 3600.0
    every_events: int | None = None
    lateness_seconds: float = 0.0
    dedup_capacity: int = 1_000_000
    edge_ttl_seconds: float | None = None
    # How far one event may move event time: past the newest event time seen by more than max_jump_seconds, or
    # past the wall clock by more than max_future_seconds, it is a dead letter (a clock error or a forgery would
    # otherwise make every later event late and stop all snapshots); None: no bound.
    max_jump_seconds: float | None = 365 * 86400.0
    max_future_seconds: float | None = 86400.0
    # How far events may grow the state (GraphLimits): beyond, a dead letter naming the setting.
    max_networks: int | None = GraphLimits.max_networks
    max_network_pairs: int | None = GraphLimits.max_network_pairs
    max_nodes_per_network: int | None = GraphLimits.max_nodes_per_network
    max_attr_width: int | None = GraphLimits.max_attr_width

    @property
    def graph_limits(self) -> GraphLimits:
        return GraphLimits(self.max_networks, self.max_network_pairs, self.max_nodes_per_network, self.max_attr_width)

    def __post_init__(self) -> None:
        if self.window_seconds is None and self.every_events is None:
            raise ValueError("SnapshotPolicy needs window_seconds or every_events (or both); both are None")
        window, lateness = self.window_seconds, self.lateness_seconds
        if window is not None and not (_is_number(window) and 0 < window < math.inf):
            raise ValueError(f"window_seconds must be a positive finite number of seconds, got {window!r}")
        if self.every_events is not None and not (_is_integer(self.every_events) and self.every_events > 0):
            raise ValueError(f"every_events must be a positive integer, got {self.every_events!r}")
        if not (_is_number(lateness) and 0 <= lateness < math.inf):
            raise ValueError(f"lateness_seconds must be a finite number of seconds >= 0, got {lateness!r}")
        ttl = self.edge_ttl_seconds
        if ttl is not None and not (_is_number(ttl) and 0 < ttl < math.inf):
            raise ValueError(f"edge_ttl_seconds must be a positive finite number of seconds or None, got {ttl!r}")
        for name in ("max_jump_seconds", "max_future_seconds"):
            bound = getattr(self, name)
            if bound is not None and not (_is_number(bound) and 0 < bound < math.inf):
                raise ValueError(f"{name} must be a positive finite number of seconds or None, got {bound!r}")
        if not (_is_integer(self.dedup_capacity) and self.dedup_capacity > 0):
            raise ValueError(f"dedup_capacity must be a positive integer, got {self.dedup_capacity!r}")
        _ = self.graph_limits  # building them validates the bounds

    def implausible_time(self, time: float, newest: float) -> str | None:
        """Why an event at ``time`` may not move event time past ``newest`` (the newest so far), or ``None``."""
        jump, future = self.max_jump_seconds, self.max_future_seconds
        if jump is not None and newest > -math.inf and time > newest + jump:
            return (f"event time {time:.0f} is {time - newest:.0f} s past the newest event time so far "
                    f"({newest:.0f}), more than snapshots.max_jump_seconds ({jump:.0f}): a clock error?")
        if future is not None and time > _wall_clock() + future:
            return (f"event time {time:.0f} is {time - _wall_clock():.0f} s in the future, more than "
                    f"snapshots.max_future_seconds ({future:.0f}): a clock error?")
        return None


def _wall_clock() -> float:
    return _time.time()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
