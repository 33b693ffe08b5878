"""The background refresh, in its own module because it is the service's second thread that touches an aligner
(a fork of it) and the only one that runs at a lower priority.

On a live source the aligner never holds the stream back for its heavy steps (an adaptation, a realignment,
anchors joining the coordinates: a second or more each, where an incremental step takes a tenth): it takes the
incremental step and notes what was due (``Aligner.on_snapshot(..., defer=True)``); a copy of the aligner
(``Aligner.fork``) does the heavy work here (``Aligner.refresh``) while incremental steps go on publishing; the
copy then replaces the aligner and catches up on the snapshots aligned meanwhile in one step, whose alignments are
published as usual (``service.refresh``: ``live`` by default, ``always``, ``never``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aligner.service.jobs import JobResult, Queued, coalesce, headline_and_detail
from aligner.service.metrics import Step
from aligner.update import AlignmentUpdate
from snapshots.snapshot import Snapshot

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner
    from aligner.service.metrics import ServiceMetrics
    from aligner.service.run_summary import RunSummary

log = logging.getLogger("dynalign.service")

# Added to the background refresh thread's niceness: the most there is, so it takes only the CPU left over
# (freshness at +10 and +19: docs/benchmarks.md, Freshness).
REFRESH_NICENESS = 19
REFRESH_CATCH_UPS = 3  # at most this many catch-up steps of a refreshed fork in the background


def _lower_priority() -> None:
    """Run the calling thread at a lower scheduling priority (Linux niceness applies per thread), so that the
    background refresh takes only the CPU that ingestion and incremental steps leave: they decide freshness.
    (docs/benchmarks.md, Freshness.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFRESH_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the refresh competes evenly
        pass


@dataclass
class Refreshed:
    """A refreshed fork ready to become the aligner: as of snapshot ``point`` at ``model_version``, with its own
    ``update`` (the refinement of ``point``'s alignments, or of its last catch-up), and the snapshots aligned
    since that it ``left`` to catch up on, oldest first."""

    aligner: Aligner
    update: AlignmentUpdate
    model_version: str | None
    point: Queued
    left: list[Queued]


@dataclass
class _InFlight:
    """The refresh under way: the fork doing the heavy work its aligner deferred, its job, the snapshot it is as
    of (who may publish its own alignments), the snapshots aligned since (to catch up on), and what the
    ``snapshot refreshed`` line reports of it."""

    fork: Aligner
    future: Future
    point: Queued
    refresh_of: int
    since: list[Queued] = field(default_factory=list)
    stats: dict | None = None  # the heavy step's
    seconds: float = 0.0
    catch_ups: int = 0


class BackgroundRefresh:
    """At most one fork at a time, refreshed in a thread of its own at a low priority."""

    def __init__(self, summary: RunSummary, metrics: ServiceMetrics):
        self.summary = summary
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh", initializer=_lower_priority)
        self.flight: _InFlight | None = None

    @property
    def busy(self) -> bool:
        return self.flight is not None

    def start(self, aligner: Aligner, aligned: Queued) -> None:
        """``aligner`` just deferred heavy work on ``aligned`` (and is idle): refresh a fork of it in the
        background while it goes on with incremental steps."""
        fork = aligner.fork()
        self.flight = _InFlight(fork, self.executor.submit(self._refresh, fork), aligned, aligned.snapshot.id)

    def aligned_meanwhile(self, covered: list[Queued]) -> None:
        """The aligner aligned ``covered`` while the fork works: the fork catches up on them later."""
        if self.flight is not None:
            self.flight.since += covered

    def wait(self, timeout_s: float | None) -> None:
        if self.flight is not None:
            wait([self.flight.future], timeout=timeout_s)

    def adopt(self, aligner_idle: bool) -> Refreshed | None:
        """Once the refresh is done, the fork catches up on the snapshots aligned since it was made: in the
        background too while that leaves more than one to the aligner (up to ``REFRESH_CATCH_UPS`` rounds), so
        the incremental path is held back as little as possible. (Chasing every last snapshot in the background
        kept the refresh thread busy and the incremental steps slower: docs/benchmarks.md, Freshness.) Then,
        with no alignment in flight (``aligner_idle``), the fork is handed back to become the aligner. If nothing
        is left to catch up on, its alignments are to be published (a refinement of the snapshot last
        published); else the aligner aligns what is left as one step, and that step publishes."""
        flight = self.flight
        if flight is None or not flight.future.done():
            return None
        if len(flight.since) > 1 and flight.catch_ups < REFRESH_CATCH_UPS:
            self._account(flight, flight.future.result())  # a refresh failure stops the service, like an alignment's
            caught_up, flight.since = flight.since, []
            flight.point, flight.catch_ups = caught_up[-1], flight.catch_ups + 1
            flight.future = self.executor.submit(self._refresh, flight.fork, coalesce([q.snapshot for q in caught_up]))
            return None
        if not aligner_idle:
            return None
        result: JobResult = flight.future.result()
        self._account(flight, result)
        assert result.update is not None  # a refresh or catch-up step always aligns
        refreshed = Refreshed(flight.fork, result.update, result.model_version, flight.point, flight.since)
        self.flight = None
        headline, rest = headline_and_detail(flight.stats or {})
        log.info("snapshot refreshed", extra={
            "fields": {"snapshot": flight.refresh_of, "caught_up_to": refreshed.point.snapshot.id,
                       "refresh_s": round(flight.seconds, 3), **headline},
            "detail": {**rest, "background_catch_ups": flight.catch_ups, "left_to_catch_up": len(refreshed.left)}})
        return refreshed

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def _account(self, flight: _InFlight, result: JobResult) -> None:
        """Count a refresh-thread job; the first (the heavy step) is what the ``snapshot refreshed`` line reports."""
        self.summary.refresh_s += result.seconds
        self.metrics.step(result.seconds, result.update, Step.REFRESH)
        flight.seconds += result.seconds
        if flight.stats is None and result.update is not None:
            flight.stats = result.update.stats

    @staticmethod
    def _refresh(aligner: Aligner, catch_up: Snapshot | None = None) -> JobResult:
        """In the refresh thread, the only code that touches the fork while it works: the deferred heavy step,
        or (``catch_up``) an incremental step on snapshots aligned since."""
        started = time.perf_counter()
        update = aligner.refresh() if catch_up is None else aligner.on_snapshot(catch_up, defer=True)
        return JobResult(update, None, aligner.model_version(), time.perf_counter() - started)
