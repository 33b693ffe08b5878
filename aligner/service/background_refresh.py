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
from dataclasses import dataclass
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


class BackgroundRefresh:
    """At most one fork at a time, refreshed in a thread of its own at a low priority."""

    def __init__(self, summary: RunSummary, metrics: ServiceMetrics):
        self.summary = summary
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh", initializer=_lower_priority)
        # The fork doing the heavy work its aligner deferred, the snapshot it is as of (who may publish its own
        # alignments), and the snapshots aligned since (to catch up on).
        self.future: Future | None = None
        self.fork: Aligner | None = None
        self.fork_point: Queued | None = None
        self.since_fork: list[Queued] = []
        # What the ``snapshot refreshed`` log line reports of the refresh in flight (set by start).
        self.refresh_of: int | None = None
        self.stats: dict | None = None
        self.seconds = 0.0
        self.catch_ups = 0

    @property
    def busy(self) -> bool:
        return self.future is not None

    def start(self, aligner: Aligner, aligned: Queued) -> None:
        """``aligner`` just deferred heavy work on ``aligned`` (and is idle): refresh a fork of it in the
        background while it goes on with incremental steps."""
        self.fork = aligner.fork()
        self.fork_point, self.since_fork = aligned, []
        self.refresh_of, self.stats, self.seconds, self.catch_ups = aligned.snapshot.id, None, 0.0, 0
        self.future = self.executor.submit(self._refresh, self.fork)

    def aligned_meanwhile(self, covered: list[Queued]) -> None:
        """The aligner aligned ``covered`` while the fork works: the fork catches up on them later."""
        self.since_fork += covered

    def wait(self, timeout_s: float | None) -> None:
        wait([self.future], timeout=timeout_s)

    def adopt(self, aligner_idle: bool) -> Refreshed | None:
        """Once the refresh is done, the fork catches up on the snapshots aligned since it was made: in the
        background too while that leaves more than one to the aligner (up to ``REFRESH_CATCH_UPS`` rounds), so
        the incremental path is held back as little as possible. (Chasing every last snapshot in the background
        kept the refresh thread busy and the incremental steps slower: docs/benchmarks.md, Freshness.) Then,
        with no alignment in flight (``aligner_idle``), the fork is handed back to become the aligner. If nothing
        is left to catch up on, its alignments are to be published (a refinement of the snapshot last
        published); else the aligner aligns what is left as one step, and that step publishes."""
        if self.future is None or not self.future.done():
            return None
        if len(self.since_fork) > 1 and self.catch_ups < REFRESH_CATCH_UPS:
            self._account(self.future.result())  # a refresh failure stops the service, like an alignment's
            caught_up, self.since_fork = self.since_fork, []
            self.fork_point, self.catch_ups = caught_up[-1], self.catch_ups + 1
            self.future = self.executor.submit(self._refresh, self.fork, coalesce([q.snapshot for q in caught_up]))
            return None
        if not aligner_idle:
            return None
        result: JobResult = self.future.result()
        self._account(result)
        refreshed = Refreshed(self.fork, result.update, result.model_version, self.fork_point, self.since_fork)
        self.future, self.fork, self.since_fork, self.fork_point = None, None, [], None
        headline, rest = headline_and_detail(self.stats)
        log.info("snapshot refreshed", extra={
            "fields": {"snapshot": self.refresh_of, "caught_up_to": refreshed.point.snapshot.id,
                       "refresh_s": round(self.seconds, 3), **headline},
            "detail": {**rest, "background_catch_ups": self.catch_ups, "left_to_catch_up": len(refreshed.left)}})
        return refreshed

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def _account(self, result: JobResult) -> None:
        """Count a refresh-thread job; the first (the heavy step) is what the ``snapshot refreshed`` line reports."""
        self.summary.refresh_s += result.seconds
        self.metrics.step(result.seconds, result.update, Step.REFRESH)
        self.seconds += result.seconds
        if self.stats is None:
            self.stats = result.update.stats

    @staticmethod
    def _refresh(aligner: Aligner, catch_up: Snapshot | None = None) -> JobResult:
        """In the refresh thread, the only code that touches the fork while it works: the deferred heavy step,
        or (``catch_up``) an incremental step on snapshots aligned since."""
        started = time.perf_counter()
        update = aligner.refresh() if catch_up is None else aligner.on_snapshot(catch_up, defer=True)
        return JobResult(update, None, aligner.model_version(), time.perf_counter() - started)
