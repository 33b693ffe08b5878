"""Turns an unbounded, slightly disordered event stream into a sequence of snapshots.

Real sources redeliver (at-least-once Kafka, restarted file readers) and interleave producers whose clocks
disagree, so the cutter drops repeated event ids, holds events back for a bounded lateness to apply them in
event-time order, and only then folds them into the :class:`TemporalGraphState`, cutting a snapshot whenever an
event-time window closes and/or every N applied events.

A Kafka topic is read partition by partition, one far ahead of another; taking the newest event time over all
of them as "now" would make every event of the lagging partition late. So event time advances by a watermark
per *lane* (a partition; a file is one lane), as Flink and Kafka Streams do: see :meth:`SnapshotCutter.set_lanes`.

>>> from stream.events import Event
>>> cutter = SnapshotCutter(SnapshotPolicy(window_seconds=10.0))
>>> cutter.offer(Event("add_edge", 3.0, "a", "x", "y", id="e1"))
[]
>>> cutter.offer(Event("add_edge", 3.0, "a", "x", "y", id="e1"))  # redelivered: dropped
[]
>>> [(s.id, s.start_time, s.end_time, s.events) for s in cutter.offer(Event("add_edge", 25.0, "a", "y", "z"))]
[(1, 0.0, 10.0, 1)]
>>> [(s.id, s.start_time, s.end_time, s.events) for s in cutter.flush()]
[(2, 20.0, 30.0, 1)]
>>> cutter.stats["duplicates"], cutter.stats["snapshots"]
(1, 2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import time as _time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from snapshots.graph import GraphLimits, StateConflict, TemporalGraphState
from snapshots.snapshot import Snapshot
from stream.events import Event

REFUSED = b""  # the digest remembered for an id whose event the graph refused (see SnapshotCutter._apply)

# Where events come from, each in its own order: a Kafka partition, or None for the one lane of a file or stdin.
Lane = Optional[int]


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
        self.graph_limits  # validates the bounds


class SnapshotCutter:
    """Feeds events into a :class:`TemporalGraphState` in event-time order and cuts snapshots.

    - Ids are scoped per network (``net``). An event whose ``(net, id)`` was seen among the last ``dedup_capacity``
      with the same content is a redelivery: dropped (``stats["duplicates"]``). With different content it is
      a reused or forged id: never applied, never silently dropped, but refused like a conflict (below), so a
      forged event cannot make a later valid one vanish unseen.
    - Events wait in a min-heap keyed by ``(time, arrival order)`` until the watermark reaches them: the newest
      event time seen, minus ``lateness_seconds``, in the lane furthest behind (:meth:`set_lanes`; one lane unless
      told otherwise). So an event at most ``lateness_seconds`` behind the newest of its lane is applied in its
      place (``stats["reordered"]`` when it arrived after a newer one of its lane), and ties keep arrival order.
    - Before applying an event at or past the open window's end, the open window is cut if any event was applied
      in it since the last cut; windows in which nothing was applied produce no snapshot, so snapshot ids stay
      consecutive but windows may be skipped. A window cut spans the window bounds.
    - With ``every_events``, a snapshot is also cut after every that many applied events; such a cut spans the
      earliest to the latest time of the events it covers.
    - An event older than what was already handed over (before the open window, or before the newest event of
      the last cut) is *late*: it is applied to the open window (``stats["late"]``). One behind the watermark but
      not late is applied where it falls, after newer events (``stats["out_of_order"]``).
    - An event the graph refuses (:class:`StateConflict`) changes nothing, counts in ``stats["rejected"]`` and
      waits in :meth:`drain_rejected` for the dead-letter sink.
    """

    def __init__(self, policy: SnapshotPolicy, graph: TemporalGraphState | None = None):
        self.policy = policy
        self.graph = graph if graph is not None else TemporalGraphState(policy.graph_limits)
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "duplicates", "reordered", "late", "out_of_order", "rejected", "snapshots", "expired"), 0)
        # (net, id) -> digest of the rest of the event, for the last dedup_capacity ids, oldest first
        self._seen: dict[tuple[str, str], bytes] = {}
        self._seen_order: deque[tuple[str, str]] = deque()
        self._legacy_ids: set[str] = set()  # ids from a state written before ids were scoped: duplicates, whatever net
        self._buffer: list[tuple[float, int, Event]] = []
        self._arrivals = 0
        self._newest = -math.inf  # over every lane: the watermark once every lane is idle
        # Newest event time per lane that holds the watermark back; -inf: assigned, nothing delivered yet.
        self._lanes: dict[Lane, float] = {}
        self._idle: set[Lane] = set()  # lanes caught up with their source: they hold nothing back
        self._window: int | None = None  # index k of the open window [k*W, (k+1)*W)
        # (k+1)*W: an event before it cannot open a newer window, so _apply skips the window arithmetic for it
        self._window_end = -math.inf if policy.window_seconds is not None else math.inf
        self._sealed_before = -math.inf  # events older than this were handed over already
        self._last_applied = -math.inf
        self._pending = 0  # events applied since the last cut
        self._pending_min = math.inf
        self._pending_max = -math.inf
        self._next_id = 1
        self._rejected: list[tuple[Event, str]] = []
        # Events offered so far, duplicates included; the one being offered counts only once it is applied,
        # so a window cut it triggers (made before applying it) does not count it (Snapshot.arrived).
        self.offered = 0
        self._offering: Event | None = None

    @property
    def buffered(self) -> int:
        """Events accepted but not yet applied (waiting for the watermark)."""
        return len(self._buffer)

    def offer(self, event: Event, lane: Lane = None) -> list[Snapshot]:
        """Accept one event from ``lane``; returns the snapshots it completed (usually none). O(log buffered)."""
        return self.offer_all((event,), lane)

    def offer_all(self, events: Iterable[Event], lane: Lane = None) -> list[Snapshot]:
        """:meth:`offer` each event of ``lane`` in turn; returns the snapshots they completed, in order (one call
        per batch rather than per event: ingestion offers tens of thousands of events a second)."""
        out: list[Snapshot] = []
        lanes = self._lanes
        self._idle.discard(lane)  # delivering: it holds the watermark again
        newest = lanes.setdefault(lane, -math.inf)
        # The other lanes do not move during this call, so their part of the watermark is computed once.
        if len(lanes) == 1:  # the usual single lane (a file), without the scan: offer() runs once per event
            others = math.inf
        else:
            others = min((n for other, n in lanes.items() if other != lane and other not in self._idle),
                         default=math.inf)
        offer = self._offer
        try:
            for event in events:
                newest = offer(event, out, newest, others)
        finally:
            lanes[lane] = newest
        return out

    def set_lanes(self, lanes: Iterable[Lane], idle: Iterable[Lane] = ()) -> list[Snapshot]:
        """What the source reports after a poll: the lanes it reads now, and those of them caught up (nothing
        more to read right now). Returns the snapshots the moved watermark completed.

        The watermark is the minimum, over the lanes that are not idle, of the newest event time seen in the lane,
        minus ``lateness_seconds``: a lane far behind the others makes the leading lanes' events wait rather
        than its own events late. A lane given here that has delivered nothing yet holds the watermark back; an
        idle one does not (Flink's idle sources), until it delivers again; a lane left out is forgotten (a
        revoked partition). With every lane idle the watermark is the newest event time over all of them.
        Lanes that deliver without being given here count too, so callers with one lane never call this.

        What bounds the buffer: the leading lanes' events newer than the newest of the lane furthest behind (plus
        lateness); at worst the leading partitions' whole backlog while one that has not caught up delivers nothing.
        """
        keep = set(lanes)
        for lane in [lane for lane in self._lanes if lane not in keep]:
            del self._lanes[lane]
        for lane in keep:
            self._lanes.setdefault(lane, -math.inf)
        self._idle = set(idle) & keep
        out: list[Snapshot] = []
        self._release(self.watermark, out)
        return out

    @property
    def watermark(self) -> float:
        """Events at or before this time are applied (see :meth:`set_lanes`)."""
        active = [newest for lane, newest in self._lanes.items() if lane not in self._idle]
        return (min(active) if active else self._newest) - self.policy.lateness_seconds

    def _offer(self, event: Event, out: list[Snapshot], newest: float, others: float) -> float:
        """Offer ``event`` of a lane whose newest event time is ``newest`` (the other lanes': ``others``),
        appending the snapshots it completes to ``out``; returns the lane's newest event time after it."""
        self.offered += 1
        self._offering = event
        try:
            implausible = self._implausible_time(event.time)
            if implausible:
                self.stats["rejected"] += 1
                self._rejected.append((event, implausible))
                return newest
            event_id = event.id
            if event_id is not None:
                key = (event.net, event_id)
                digest = _content_digest(event)
                seen = self._seen.get(key)
                if seen is None and self._legacy_ids and event_id in self._legacy_ids:
                    seen = digest
                if seen == REFUSED:  # the graph refused the event that came with this id: it never took effect
                    self._seen[key] = digest
                elif seen is not None:
                    if seen == digest:
                        self.stats["duplicates"] += 1
                    else:
                        self.stats["rejected"] += 1
                        self._rejected.append((event, _reused_id_reason(event)))
                    return newest
                else:
                    self._remember(key, digest)
            stats = self.stats
            stats["accepted"] += 1
            time = event.time
            lateness = self.policy.lateness_seconds
            if time >= newest:
                newest = time
                if time > self._newest:
                    self._newest = time
            elif time >= newest - lateness:
                stats["reordered"] += 1
            watermark = (newest if newest < others else others) - lateness
            if not self._buffer and time <= watermark:
                # in-order fast path: nothing waits ahead of it, so skip the heap
                self._apply(event, out)
                return newest
            heapq.heappush(self._buffer, (time, self._arrivals, event))
            self._arrivals += 1
            self._release(watermark, out)
            return newest
        finally:
            self._offering = None

    def _implausible_time(self, time: float) -> str | None:
        """Why ``time`` may not move event time (see :class:`SnapshotPolicy`), or ``None``."""
        jump, future = self.policy.max_jump_seconds, self.policy.max_future_seconds
        if jump is not None and self._newest > -math.inf and time > self._newest + jump:
            return (f"event time {time:.0f} is {time - self._newest:.0f} s past the newest event time so far "
                    f"({self._newest:.0f}), more than snapshots.max_jump_seconds ({jump:.0f}): a clock error?")
        if future is not None and time > _wall_clock() + future:
            return (f"event time {time:.0f} is {time - _wall_clock():.0f} s in the future, more than "
                    f"snapshots.max_future_seconds ({future:.0f}): a clock error?")
        return None

    def flush(self) -> list[Snapshot]:
        """End of a finite stream: apply everything buffered and cut the open snapshot if it has events."""
        out: list[Snapshot] = []
        self._release(math.inf, out)
        if self._pending:
            if self._window is not None:
                out.append(self._cut(*self._window_bounds(self._window)))
            else:
                out.append(self._cut(self._pending_min, self._pending_max))
        return out

    def drain_rejected(self) -> list[tuple[Event, str]]:
        """Events the graph refused since the last call, with the reason, for the dead-letter sink."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: plain values, lists, dicts and the graph's numpy arrays."""
        return {
            "policy": dataclasses.asdict(self.policy),
            "graph": self.graph.to_state(),
            "stats": dict(self.stats),
            "seen": [[net, event_id, self._seen[(net, event_id)].hex()] for net, event_id in self._seen_order],
            "seen_ids": sorted(self._legacy_ids),
            "buffer": [[time, arrival, _event_record(event)] for time, arrival, event in self._buffer],
            "arrivals": self._arrivals,
            "newest": self._newest,
            "lanes": [[lane, newest, lane in self._idle] for lane, newest in self._lanes.items()],
            "window": self._window,
            "sealed_before": self._sealed_before,
            "last_applied": self._last_applied,
            "pending": self._pending,
            "pending_min": self._pending_min,
            "pending_max": self._pending_max,
            "next_id": self._next_id,
            "offered": self.offered,
            "rejected": [[_event_record(event), reason] for event, reason in self._rejected],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], policy: SnapshotPolicy | None = None) -> SnapshotCutter:
        """Resume from :meth:`to_state`, under the saved policy or under ``policy`` (e.g. from a changed config).

        A new policy may change anything but ``window_seconds`` (the open window and sealed boundary are in its
        units); a smaller ``dedup_capacity`` forgets the oldest ids.
        """
        saved = SnapshotPolicy(**state["policy"])
        if policy is None:
            policy = saved
        elif policy.window_seconds != saved.window_seconds:
            raise ValueError(f"cannot resume with window_seconds={policy.window_seconds!r}: the state was cut with "
                             f"window_seconds={saved.window_seconds!r} (start from a fresh state dir to change it)")
        cutter = cls(policy, TemporalGraphState.from_state(state["graph"], policy.graph_limits))
        cutter.stats.update(state["stats"])
        for net, event_id, digest in state.get("seen", ()):
            cutter._remember((str(net), str(event_id)), bytes.fromhex(digest))
        # Written before ids were scoped per network: their network and content are unknown, so any event
        # reusing one is taken for a redelivery, as it was then.
        cutter._legacy_ids = set(map(str, state["seen_ids"]))
        # saved in heap order, so the list is a valid heap as it stands
        cutter._buffer = [(float(time), int(arrival), _event_from_record(record))
                          for time, arrival, record in state["buffer"]]
        cutter._arrivals = int(state["arrivals"])
        cutter._newest = float(state["newest"])
        if "lanes" in state:
            for lane, newest, idle in state["lanes"]:
                lane = None if lane is None else int(lane)
                cutter._lanes[lane] = float(newest)
                if idle:
                    cutter._idle.add(lane)
        elif cutter._newest > -math.inf:  # written before lanes: everything came in one lane
            cutter._lanes[None] = cutter._newest
        cutter._window = None if state["window"] is None else int(state["window"])
        if cutter._window is not None:
            cutter._window_end = cutter._window_bounds(cutter._window)[1]
        cutter._sealed_before = float(state["sealed_before"])
        cutter._last_applied = float(state["last_applied"])
        cutter._pending = int(state["pending"])
        cutter._pending_min = float(state["pending_min"])
        cutter._pending_max = float(state["pending_max"])
        cutter._next_id = int(state["next_id"])
        cutter.offered = int(state.get("offered", 0))  # absent from states written before it existed
        cutter._rejected = [(_event_from_record(record), reason) for record, reason in state["rejected"]]
        return cutter

    def _remember(self, key: tuple[str, str], digest: bytes) -> None:
        self._seen[key] = digest
        order = self._seen_order
        order.append(key)
        if len(order) > self.policy.dedup_capacity:
            del self._seen[order.popleft()]

    def _release(self, watermark: float, out: list[Snapshot]) -> None:
        buffer = self._buffer
        while buffer and buffer[0][0] <= watermark:
            self._apply(heapq.heappop(buffer)[2], out)

    def _apply(self, event: Event, out: list[Snapshot]) -> None:
        time = event.time
        if time >= self._window_end:  # only then can the event open a newer window (never with counts alone)
            window = self._window_of(time)
            if self._window is None or window > self._window:
                if self._window is not None and self._pending:
                    out.append(self._cut(*self._window_bounds(self._window)))
                self._window = window
                start, self._window_end = self._window_bounds(window)
                self._sealed_before = max(self._sealed_before, start)
        if time < self._sealed_before:
            self.stats["late"] += 1
        elif time < self._last_applied:
            self.stats["out_of_order"] += 1
        if event is self._offering:
            self._offering = None  # applied from here on: a cut now (every_events) covers it
        try:
            self.graph.apply(event)
        except StateConflict as conflict:
            self.stats["rejected"] += 1
            self._rejected.append((event, conflict.reason))
            if event.id is not None and (event.net, event.id) in self._seen:
                # A corrected resend under the same id must not be taken for a forgery of this one.
                self._seen[(event.net, event.id)] = REFUSED
            return
        self._pending += 1
        # comparisons rather than min()/max(): this runs once per event
        if time < self._pending_min:
            self._pending_min = time
        if time > self._pending_max:
            self._pending_max = time
        if time > self._last_applied:
            self._last_applied = time
        every = self.policy.every_events
        if every is not None and self._pending >= every:
            out.append(self._cut(self._pending_min, self._pending_max))

    def _cut(self, start_time: float, end_time: float) -> Snapshot:
        if self.policy.edge_ttl_seconds is not None:
            self.stats["expired"] += self.graph.expire(end_time - self.policy.edge_ttl_seconds)
        snapshot = self.graph.snapshot(self._next_id, start_time, end_time, self._pending)
        snapshot = dataclasses.replace(snapshot, arrived=self.offered - (self._offering is not None))
        self._next_id += 1
        self.stats["snapshots"] += 1
        self._sealed_before = max(self._sealed_before, self._pending_max)
        self._pending = 0
        self._pending_min, self._pending_max = math.inf, -math.inf
        return snapshot

    def _window_of(self, time: float) -> int:
        """k with k*W <= time < (k+1)*W as computed in floats, so bounds and membership never disagree."""
        width = self.policy.window_seconds
        assert width is not None
        k = math.floor(time / width)
        if time < k * width:
            k -= 1
        elif time >= (k + 1) * width:
            k += 1
        return k

    def _window_bounds(self, window: int) -> tuple[float, float]:
        width = self.policy.window_seconds
        assert width is not None
        return window * width, (window + 1) * width


def _event_record(event: Event) -> list[Any]:
    attrs = None if event.attrs is None else [list(item) if isinstance(item, tuple) else item for item in event.attrs]
    return [event.op, event.time, event.net, event.u, event.v, event.to, event.weight, attrs, event.id]


def _event_from_record(record: list[Any]) -> Event:
    op, time, net, u, v, to, weight, attrs, event_id = record
    if attrs is not None:
        attrs = tuple((str(item[0]), float(item[1])) if isinstance(item, (list, tuple)) else float(item)
                      for item in attrs)
    return Event(op=op, time=float(time), net=net, u=u, v=v, to=to, weight=float(weight), attrs=attrs, id=event_id)


def _content_digest(event: Event) -> bytes:
    """What a redelivery repeats exactly: every field but the id, hashed so that finding a different event with
    the same digest is out of reach (a forger who could would make a valid event vanish as a duplicate)."""
    # The network is part of the key, not of the content. repr of each field: a node id holding the separator
    # cannot make two events read alike.
    text = (f"{event.op}\x1f{event.time!r}\x1f{event.u!r}\x1f{event.v!r}\x1f{event.to!r}\x1f{event.weight!r}"
            f"\x1f{event.attrs!r}")
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def _reused_id_reason(event: Event) -> str:
    return (f"event id {event.id!r} was used before in network {event.net!r} by a different event (a reused or "
            f"forged id): the first one was applied, this one is not")


def _wall_clock() -> float:
    return _time.time()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
