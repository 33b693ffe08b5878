"""When the cutter cuts: the open event-time window, the every-N-events count, and what is already sealed.

The policy of cutting apart from its mechanics (folding into the graph, expiring old edges, numbering and
building the snapshot: :class:`snapshots.cutter.SnapshotCutter`), so the rules below are stated, tested and
checkpointed in one place:

- Windows are ``[k*W, (k+1)*W)``. An event at or past the open window's end opens a newer one, and the open
  one is cut first if any event was applied in it since the last cut; windows in which nothing was applied
  produce no snapshot. A window cut spans the window bounds.
- With ``every_events``, a snapshot is also cut after every that many applied events, spanning the earliest to
  the latest time of the events it covers.
- An event older than what was already handed over (before the open window, or before the newest event of the
  last cut) is *late*; one older than the newest applied but not late is *out of order*. Both are applied to
  the open window: the schedule only names them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

Disorder = Literal["late", "out_of_order"]  # the cutter's stats keys for them


class CutSchedule:
    """The open window, the events applied since the last cut (count and time span), and the sealed boundary."""

    def __init__(self, window_seconds: float | None, every_events: int | None):
        self.window_seconds = window_seconds
        self.every_events = every_events
        self.window: int | None = None  # index k of the open window [k*W, (k+1)*W)
        # (k+1)*W: an event before it cannot open a newer window, so the cutter skips advance() for it
        self.window_end = -math.inf if window_seconds is not None else math.inf
        self.sealed_before = -math.inf  # events older than this were handed over already
        self.last_applied = -math.inf
        self.pending = 0  # events applied since the last cut
        self.pending_min = math.inf
        self.pending_max = -math.inf

    def advance(self, time: float) -> tuple[float, float] | None:
        """Open the window of an event at ``time`` (at or past :attr:`window_end`) if it is newer; returns the
        bounds of the window it closes when that must be cut before the event is applied."""
        window = self._window_of(time)
        if self.window is not None and window <= self.window:
            return None
        closed = self._window_bounds(self.window) if self.window is not None and self.pending else None
        self.window = window
        start, self.window_end = self._window_bounds(window)
        self.sealed_before = max(self.sealed_before, start)
        return closed

    def disorder(self, time: float) -> Disorder | None:
        """Whether an event at ``time``, about to be applied, is late or out of order (see the module docstring)."""
        if time < self.sealed_before:
            return "late"
        if time < self.last_applied:
            return "out_of_order"
        return None

    def applied(self, time: float) -> bool:
        """Count an applied event at ``time``; True when ``every_events`` are due a cut of :meth:`span`."""
        self.pending += 1
        # comparisons rather than min()/max(): this runs once per event
        if time < self.pending_min:
            self.pending_min = time
        if time > self.pending_max:
            self.pending_max = time
        if time > self.last_applied:
            self.last_applied = time
        return self.every_events is not None and self.pending >= self.every_events

    def span(self) -> tuple[float, float]:
        """The earliest and latest time of the events applied since the last cut."""
        return self.pending_min, self.pending_max

    def final_bounds(self) -> tuple[float, float] | None:
        """At the end of the stream, the bounds of the cut still owed (``None``: nothing applied since the last)."""
        if not self.pending:
            return None
        return self._window_bounds(self.window) if self.window is not None else self.span()

    def cut(self) -> None:
        """A snapshot was cut of the events applied so far: they are handed over."""
        self.sealed_before = max(self.sealed_before, self.pending_max)
        self.pending = 0
        self.pending_min, self.pending_max = math.inf, -math.inf

    def to_state(self) -> dict[str, Any]:
        return {"window": self.window, "sealed_before": self.sealed_before, "last_applied": self.last_applied,
                "pending": self.pending, "pending_min": self.pending_min, "pending_max": self.pending_max}

    @classmethod
    def from_state(cls, state: dict[str, Any], window_seconds: float | None,
                   every_events: int | None) -> CutSchedule:
        schedule = cls(window_seconds, every_events)
        schedule.window = None if state["window"] is None else int(state["window"])
        if schedule.window is not None:
            schedule.window_end = schedule._window_bounds(schedule.window)[1]
        schedule.sealed_before = float(state["sealed_before"])
        schedule.last_applied = float(state["last_applied"])
        schedule.pending = int(state["pending"])
        schedule.pending_min = float(state["pending_min"])
        schedule.pending_max = float(state["pending_max"])
        return schedule

    def _window_of(self, time: float) -> int:
        """k with k*W <= time < (k+1)*W as computed in floats, so bounds and membership never disagree."""
        width = self.window_seconds
        assert width is not None
        k = math.floor(time / width)
        if time < k * width:
            k -= 1
        elif time >= (k + 1) * width:
            k += 1
        return k

    def _window_bounds(self, window: int) -> tuple[float, float]:
        width = self.window_seconds
        assert width is not None
        return window * width, (window + 1) * width
