"""The aligner thread and what it works on, in its own module because it is the one place that hands the aligner
to another thread: the snapshots queued for it, the job in flight and what that job covers.

Queued snapshots become one catch-up step (:func:`aligner.service.jobs.coalesce`) on a live source; when nothing
waits and the stream has been quiet for a while, the thread spends its time on the meta-update iterations the last
adaptation left owed (never while snapshots come faster than an iteration takes: each new one would wait behind
it). The aligner's state is serialised in the thread only when a checkpoint is near, so a checkpoint records the
aligner as of some snapshot (:class:`aligner.service.jobs.AlignerState`), which may trail the last one aligned.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from aligner.config import ServiceConfig
from aligner.service.jobs import AlignerState, JobResult, Queued, coalesce, headline_and_detail
from aligner.service.metrics import Step
from aligner.update import AlignmentUpdate
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner
    from aligner.service.background_refresh import Refreshed
    from aligner.service.metrics import ServiceMetrics
    from aligner.service.run_summary import RunSummary

log = logging.getLogger("dynalign.service")

LEARN_QUIET_S = 0.5  # at least this long without a new snapshot before a meta-update iteration starts


class JobKind(enum.Enum):
    ALIGNMENT = "alignment"  # queued snapshots, aligned as one step
    META_UPDATE = "meta-update"  # one owed meta-update iteration: aligns nothing, publishes nothing


@dataclass
class Finished:
    """A job the aligner thread finished: its kind, the alignment (``None``: a meta-update, or nothing to align
    yet) and the queued snapshots it covered, oldest first (none for a meta-update)."""

    kind: JobKind
    update: AlignmentUpdate | None
    covered: list[Queued]


class AlignmentWorker:
    """Owns the aligner (the main thread touches it only while no job is in flight), the snapshots waiting for it
    and the one job in flight. ``live``: the source is live (Kafka, stdin), which decides ``service.coalesce``
    and ``service.refresh``. ``state_wanted(serialised_at)``: whether a job finishing now should serialise the
    aligner's state for the next checkpoint, given when it was last serialised (``time.monotonic()``)."""

    def __init__(self, aligner: Aligner, saved: AlignerState, last_snapshot: int | None, backlog: deque[Queued],
                 store: SnapshotStore, summary: RunSummary, metrics: ServiceMetrics, settings: ServiceConfig,
                 live: bool, state_wanted: Callable[[float], bool]):
        self.aligner = aligner
        self.saved = saved  # what a checkpoint records; may trail aligned_through
        self.aligned_through = saved.through
        self.model_version = saved.model_version
        self.last_snapshot = last_snapshot  # the newest snapshot cut (saved in the store)
        self.backlog = backlog
        self.store = store
        self.summary = summary
        self.metrics = metrics
        self.coalesce_backlog = settings.coalesce == "always" or (settings.coalesce == "live" and live)
        self.defer_heavy = settings.refresh == "always" or (settings.refresh == "live" and live)
        self.state_wanted = state_wanted
        self.submitter = threading.current_thread()  # the only thread that submits jobs and collects them
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")
        self.job: Future | None = None
        self.job_kind = JobKind.ALIGNMENT
        self.job_covers = 0  # how many queued snapshots the job in flight aligns
        self.job_started = 0.0  # time.monotonic()
        self.serialised_at = 0.0  # when the aligner's state was last serialised (time.monotonic())
        self.last_queued = 0.0  # when the newest snapshot was queued (time.monotonic())
        self.learn_iteration_s = 0.0  # how long the last meta-update iteration took

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def aligning(self) -> bool:
        """An alignment is in flight (a meta-update is background work)."""
        return self.job is not None and self.job_kind is JobKind.ALIGNMENT

    def queue(self, snap: Snapshot, live_partitions: set[int] | None) -> None:
        """Save a snapshot just cut and queue it for the aligner."""
        started = time.perf_counter()
        self.store.save_snapshot(snap, model_version=self.model_version)
        self.metrics.snapshot_cut(snap, time.perf_counter() - started)
        self.summary.snapshots += 1
        self.last_snapshot = snap.id
        self.last_queued = time.monotonic()
        self.backlog.append(Queued(snap, live_partitions, self.last_queued))

    def align_next(self) -> None:
        """Hand the queued snapshots to the aligner thread, as one catch-up step (see :func:`coalesce`).

        The source keeps being read while the aligner works, so the next snapshot is cut meanwhile; it pauses
        only when ``service.max_backlog`` snapshots wait. ``service.coalesce`` says when queued snapshots are
        aligned as one step: ``live`` (the default) for Kafka and stdin, where freshness comes first, not for a
        file being replayed, where every snapshot gets its own alignment and history; ``always``; ``never``.
        """
        take = len(self.backlog) if self.coalesce_backlog else 1
        self.job_kind, self.job_covers, self.job_started = JobKind.ALIGNMENT, take, time.monotonic()
        self.job = self.executor.submit(self._align, coalesce([q.snapshot for q in list(self.backlog)[:take]]))

    def learning_due(self) -> bool:
        """Meta-update iterations are owed and the stream has been quiet long enough for one: no snapshot queued
        for twice the last iteration's time. A live stream cutting snapshots faster than that never waits behind
        one; the iterations stay owed and run when it pauses, or with the next adaptation."""
        return self.aligner.meta_due > 0 and time.monotonic() - self.last_queued >= max(LEARN_QUIET_S,
                                                                                     2 * self.learn_iteration_s)

    def learn_next(self) -> None:
        """Nothing waits to be aligned: spend the time on one owed meta-update iteration (a second or so, so a
        snapshot cut meanwhile waits at most that long)."""
        self.job_kind, self.job_covers = JobKind.META_UPDATE, 0
        self.job = self.executor.submit(self._learn)

    def collect(self, wait_s: float | None) -> Finished | None:
        """If the job in flight has finished (waiting up to ``wait_s``), take in its result: the snapshots it
        covered leave the backlog, and an alignment is logged. ``None``: still running, or none in flight."""
        if self.job is None or not wait([self.job], timeout=wait_s).done:
            return None
        result: JobResult = self.job.result()  # an aligner failure stops the service
        update, state, self.model_version = result.update, result.state, result.model_version
        self.job = None
        if self.job_kind is JobKind.META_UPDATE:  # durable with the next periodic checkpoint
            if state is not None:  # the aligner after everything aligned so far, plus the iteration
                self.saved = AlignerState(state, self.aligned_through, self.model_version)
            self.summary.learn_s += result.seconds
            self.metrics.step(result.seconds, None, Step.META_UPDATE)
            self.learn_iteration_s = result.seconds
            return Finished(JobKind.META_UPDATE, None, [])
        covered = [self.backlog.popleft() for _ in range(self.job_covers)]
        snap, queued_s = covered[-1].snapshot, self.job_started - covered[0].cut_at
        self.aligned_through = snap.id
        if state is not None:
            self.saved = AlignerState(state, snap.id, self.model_version)
        self.summary.align_s += result.seconds
        self.metrics.step(result.seconds, update, queued_s=queued_s)
        fields = {"snapshot": snap.id, "events": snap.events, "job_s": round(result.seconds, 3)}
        detail = {**{f"nodes:{n}": int(s.alive.sum()) for n, s in snap.networks.items()},
                  "snapshots": self.job_covers, "queued_s": round(queued_s, 3)}
        if update is None:
            log.info("snapshot cut", extra={"fields": fields, "detail": detail})
        else:
            headline, rest = headline_and_detail(update.stats)
            log.info("snapshot aligned", extra={"fields": {**fields, **headline}, "detail": {**detail, **rest}})
        return Finished(JobKind.ALIGNMENT, update, covered)

    def adopt(self, refreshed: Refreshed) -> None:
        """The refreshed fork becomes the aligner (no job is in flight); what it has not caught up on is aligned
        again as one step at the head of the backlog."""
        self.aligner = refreshed.aligner
        # The fork is as of its last step: a checkpoint from here on must not claim later snapshots for it.
        self.aligned_through = refreshed.point.snapshot.id
        self.model_version = refreshed.model_version
        if refreshed.left:
            last = refreshed.left[-1]
            self.backlog.appendleft(Queued(coalesce([q.snapshot for q in refreshed.left]), last.live_partitions,
                                           last.cut_at))

    def checkpoint_state(self) -> AlignerState:
        """The aligner's state for a checkpoint: brought up to date first if the aligner is idle (no job, and
        the caller is the thread that submits them, not Kafka's thread revoking partitions)."""
        if (self.job is None and self.saved.through != self.aligned_through
                and threading.current_thread() is self.submitter):
            self.saved = AlignerState(self._serialise_state(), self.aligned_through, self.model_version)
        return self.saved

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- in the aligner thread ------------------------------------------------------------------------------------

    def _align(self, snap: Snapshot) -> JobResult:
        """The only code that touches the aligner while a job is in flight."""
        started = time.perf_counter()
        update = self.aligner.on_snapshot(snap, defer=self.defer_heavy)
        return JobResult(update, self._state_if_due(), self.aligner.model_version(), time.perf_counter() - started)

    def _learn(self) -> JobResult:
        """Like :meth:`_align`, for a meta-update iteration."""
        started = time.perf_counter()
        self.aligner.learn(1)
        return JobResult(None, self._state_if_due(), self.aligner.model_version(), time.perf_counter() - started)

    def _state_if_due(self) -> bytes | None:
        """The aligner's state when the checkpoints want it (see ``state_wanted``), else ``None``. Once per
        checkpoint: at several alignments a second, every job of the last second serialising the state held each
        of them back (docs/benchmarks.md, Freshness)."""
        return self._serialise_state() if self.state_wanted(self.serialised_at) else None

    def _serialise_state(self) -> bytes:
        started = time.perf_counter()
        self.serialised_at = time.monotonic()
        state = self.aligner.state_bytes()
        self.summary.state_s += time.perf_counter() - started
        return state
