"""Event time per *lane* (a Kafka partition; a file or stdin is one lane) and the watermark it gives.

A Kafka topic is read partition by partition, one far ahead of another; taking the newest event time over all
of them as "now" would make every event of the lagging partition late. So, as in Flink and Kafka Streams, the
watermark is the minimum, over the lanes that are not idle, of the newest event time seen in the lane, minus
``lateness_seconds``: a lane far behind the others makes the leading lanes' events wait rather than its own
events late. A lane that has delivered nothing yet holds the watermark back; an idle one (caught up with its
source, Flink's idle sources) does not, until it delivers again; a lane the source no longer reads is
forgotten (a revoked partition). With every lane idle the watermark is the newest event time over all of them.

What that bounds the cutter's buffer by: the leading lanes' events newer than the newest of the lane furthest
behind (plus lateness); at worst the leading partitions' whole backlog while one that has not caught up
delivers nothing.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

# Where events come from, each in its own order: a Kafka partition, or None for the one lane of a file or stdin.
Lane = Optional[int]


class LaneClocks:
    """The newest event time per lane that holds the watermark back (-inf: assigned, nothing delivered yet),
    the idle lanes, and the newest event time over every lane ever read."""

    def __init__(self, lateness_seconds: float):
        self.lateness_seconds = lateness_seconds
        self.newest = -math.inf  # over every lane: the watermark once every lane is idle
        self._lanes: dict[Lane, float] = {}
        self._idle: set[Lane] = set()

    def begin(self, lane: Lane) -> tuple[float, float]:
        """``lane`` delivers a batch (so it holds the watermark again): the newest event time it had, and the
        minimum over the other lanes that are not idle (they do not move while it delivers)."""
        lanes = self._lanes
        self._idle.discard(lane)
        newest = lanes.setdefault(lane, -math.inf)
        if len(lanes) == 1:  # the usual single lane (a file), without the scan: a batch is often one event
            return newest, math.inf
        return newest, min((n for other, n in lanes.items() if other != lane and other not in self._idle),
                           default=math.inf)

    def end(self, lane: Lane, newest: float) -> None:
        """``lane``'s batch is over, its newest event time now ``newest``."""
        self._lanes[lane] = newest
        if newest > self.newest:
            self.newest = newest

    def assign(self, lanes: Iterable[Lane], idle: Iterable[Lane] = ()) -> None:
        """The lanes the source reads now, and those of them caught up (see the module docstring)."""
        keep = set(lanes)
        for lane in [lane for lane in self._lanes if lane not in keep]:
            del self._lanes[lane]
        for lane in keep:
            self._lanes.setdefault(lane, -math.inf)
        self._idle = set(idle) & keep

    @property
    def watermark(self) -> float:
        """Events at or before this time may be applied."""
        active = [newest for lane, newest in self._lanes.items() if lane not in self._idle]
        return (min(active) if active else self.newest) - self.lateness_seconds

    def to_state(self) -> dict[str, Any]:
        return {"newest": self.newest,
                "lanes": [[lane, newest, lane in self._idle] for lane, newest in self._lanes.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any], lateness_seconds: float) -> LaneClocks:
        clocks = cls(lateness_seconds)
        clocks.newest = float(state["newest"])
        if "lanes" in state:
            for lane, newest, idle in state["lanes"]:
                lane = None if lane is None else int(lane)
                clocks._lanes[lane] = float(newest)
                if idle:
                    clocks._idle.add(lane)
        elif clocks.newest > -math.inf:  # written before lanes: everything came in one lane
            clocks._lanes[None] = clocks.newest
        return clocks
