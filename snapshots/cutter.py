"""Turns an unbounded, slightly disordered event stream into a sequence of snapshots.

Real sources redeliver (at-least-once Kafka, restarted file readers) and interleave producers whose clocks
disagree, so the cutter drops repeated event ids, holds events back for a bounded lateness to apply them in
event-time order, and only then folds them into the :class:`TemporalGraphState`, cutting a snapshot whenever an
event-time window closes and/or every N applied events.

The cutter is the façade over its parts, each in its own module: the settings (:mod:`snapshots.policy`), the
memory of recent ids (:mod:`snapshots.dedup`), event time per lane and the watermark (:mod:`snapshots.lanes`:
a Kafka partition is a lane, a file one lane), and when to cut (:mod:`snapshots.schedule`). What stays here
is the mechanics: the reorder buffer, folding events into the graph, and building, numbering and counting the
snapshots.

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
import heapq
import math
from typing import Any, Iterable

from snapshots.dedup import RedeliveryFilter, Verdict, reused_id_reason
from snapshots.graph import TemporalGraphState
from snapshots.lanes import Lane, LaneClocks
from snapshots.limits import StateConflict
from snapshots.policy import SnapshotPolicy
from snapshots.schedule import CutSchedule
from snapshots.snapshot import Snapshot
from stream.events import Event


class SnapshotCutter:
    """Feeds events into a :class:`TemporalGraphState` in event-time order and cuts snapshots.

    - An event whose ``(net, id)`` was seen recently with the same content is a redelivery: dropped
      (``stats["duplicates"]``); one reusing an id for other content is refused like a conflict (below), so a
      forged event cannot make a later valid one vanish unseen (:mod:`snapshots.dedup`).
    - Events wait in a min-heap keyed by ``(time, arrival order)`` until the watermark reaches them: the newest
      event time seen, minus ``lateness_seconds``, in the lane furthest behind (:meth:`set_lanes`; one lane unless
      told otherwise). So an event at most ``lateness_seconds`` behind the newest of its lane is applied in its
      place (``stats["reordered"]`` when it arrived after a newer one of its lane), and ties keep arrival order.
    - Snapshots are cut when a window closes and/or every N applied events (:mod:`snapshots.schedule`, which
      also says when an event is late, ``stats["late"]``, or out of order, ``stats["out_of_order"]``); snapshot
      ids stay consecutive, windows in which nothing was applied are skipped.
    - An event the graph refuses (:class:`StateConflict`), or whose time is implausible
      (:meth:`SnapshotPolicy.implausible_time`), changes nothing, counts in ``stats["rejected"]`` and waits in
      :meth:`drain_rejected` for the dead-letter sink.
    """

    def __init__(self, policy: SnapshotPolicy, graph: TemporalGraphState | None = None):
        self.policy = policy
        self.graph = graph if graph is not None else TemporalGraphState(policy.graph_limits)
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "duplicates", "reordered", "late", "out_of_order", "rejected", "snapshots", "expired"), 0)
        self._dedup = RedeliveryFilter(policy.dedup_capacity)
        self._lanes = LaneClocks(policy.lateness_seconds)
        self._schedule = CutSchedule(policy.window_seconds, policy.every_events)
        self._buffer: list[tuple[float, int, Event]] = []
        self._arrivals = 0
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
        newest, others = self._lanes.begin(lane)
        # Only this lane moves during the batch, so the newest time over all lanes is the larger of the two.
        before = self._lanes.newest
        offer = self._offer
        try:
            for event in events:
                newest = offer(event, out, newest, others, before)
        finally:
            self._lanes.end(lane, newest)
        return out

    def set_lanes(self, lanes: Iterable[Lane], idle: Iterable[Lane] = ()) -> list[Snapshot]:
        """What the source reports after a poll: the lanes it reads now, and those of them caught up (nothing
        more to read right now). Returns the snapshots the moved watermark completed. Lanes that deliver without
        being given here count too, so callers with one lane never call this. See :mod:`snapshots.lanes`."""
        self._lanes.assign(lanes, idle)
        out: list[Snapshot] = []
        self._release(self.watermark, out)
        return out

    @property
    def watermark(self) -> float:
        """Events at or before this time are applied (see :meth:`set_lanes`)."""
        return self._lanes.watermark

    def _offer(self, event: Event, out: list[Snapshot], newest: float, others: float, before: float) -> float:
        """Offer ``event`` of a lane whose newest event time is ``newest`` (the other lanes': ``others``; all
        lanes' before this batch: ``before``), appending the snapshots it completes to ``out``; returns the
        lane's newest event time after it."""
        self.offered += 1
        self._offering = event
        try:
            implausible = self.policy.implausible_time(event.time, newest if newest > before else before)
            if implausible:
                self._reject(event, implausible)
                return newest
            verdict = self._dedup.check(event)
            if verdict is not None:
                if verdict is Verdict.DUPLICATE:
                    self.stats["duplicates"] += 1
                else:
                    self._reject(event, reused_id_reason(event))
                return newest
            stats = self.stats
            stats["accepted"] += 1
            time = event.time
            lateness = self.policy.lateness_seconds
            if time >= newest:
                newest = time
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

    def flush(self) -> list[Snapshot]:
        """End of a finite stream: apply everything buffered and cut the open snapshot if it has events."""
        out: list[Snapshot] = []
        self._release(math.inf, out)
        bounds = self._schedule.final_bounds()
        if bounds is not None:
            out.append(self._cut(*bounds))
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
            **self._dedup.to_state(),
            "buffer": [[time, arrival, _event_record(event)] for time, arrival, event in self._buffer],
            "arrivals": self._arrivals,
            **self._lanes.to_state(),
            **self._schedule.to_state(),
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
        cutter._dedup = RedeliveryFilter.from_state(state, policy.dedup_capacity)
        # saved in heap order, so the list is a valid heap as it stands
        cutter._buffer = [(float(time), int(arrival), _event_from_record(record))
                          for time, arrival, record in state["buffer"]]
        cutter._arrivals = int(state["arrivals"])
        cutter._lanes = LaneClocks.from_state(state, policy.lateness_seconds)
        cutter._schedule = CutSchedule.from_state(state, policy.window_seconds, policy.every_events)
        cutter._next_id = int(state["next_id"])
        cutter.offered = int(state.get("offered", 0))  # absent from states written before it existed
        cutter._rejected = [(_event_from_record(record), reason) for record, reason in state["rejected"]]
        return cutter

    def _reject(self, event: Event, reason: str) -> None:
        self.stats["rejected"] += 1
        self._rejected.append((event, reason))

    def _release(self, watermark: float, out: list[Snapshot]) -> None:
        buffer = self._buffer
        while buffer and buffer[0][0] <= watermark:
            self._apply(heapq.heappop(buffer)[2], out)

    def _apply(self, event: Event, out: list[Snapshot]) -> None:
        time = event.time
        schedule = self._schedule
        if time >= schedule.window_end:  # only then can the event open a newer window (never with counts alone)
            closed = schedule.advance(time)
            if closed is not None:
                out.append(self._cut(*closed))
        disorder = schedule.disorder(time)
        if disorder is not None:
            self.stats[disorder] += 1
        if event is self._offering:
            self._offering = None  # applied from here on: a cut now (every_events) covers it
        try:
            self.graph.apply(event)
        except StateConflict as conflict:
            self._reject(event, conflict.reason)
            self._dedup.refused(event)
            return
        if schedule.applied(time):
            out.append(self._cut(*schedule.span()))

    def _cut(self, start_time: float, end_time: float) -> Snapshot:
        if self.policy.edge_ttl_seconds is not None:
            self.stats["expired"] += self.graph.expire(end_time - self.policy.edge_ttl_seconds)
        snapshot = self.graph.snapshot(self._next_id, start_time, end_time, self._schedule.pending)
        snapshot = dataclasses.replace(snapshot, arrived=self.offered - (self._offering is not None))
        self._next_id += 1
        self.stats["snapshots"] += 1
        self._schedule.cut()
        return snapshot


def _event_record(event: Event) -> list[Any]:
    attrs = None if event.attrs is None else [list(item) if isinstance(item, tuple) else item for item in event.attrs]
    return [event.op, event.time, event.net, event.u, event.v, event.to, event.weight, attrs, event.id]


def _event_from_record(record: list[Any]) -> Event:
    op, time, net, u, v, to, weight, attrs, event_id = record
    if attrs is not None:
        attrs = tuple((str(item[0]), float(item[1])) if isinstance(item, (list, tuple)) else float(item)
                      for item in attrs)
    return Event(op=op, time=float(time), net=net, u=u, v=v, to=to, weight=float(weight), attrs=attrs, id=event_id)
