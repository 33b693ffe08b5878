"""Checkpoints, in their own module because their order of steps is what makes a crash at any moment lose
nothing, and a restart read back what they wrote (:func:`aligner.service.recovery.recover`).

A checkpoint holds the graph and cutter state, the aligner's state as of the last snapshot it finished
(``aligned_through``), the update Redis has not taken yet, the partitions each network's events came from, and
the source position. It can be written at any moment (every ``CHECKPOINT_EVERY_S``, when Kafka revokes
partitions, at exit) because snapshots cut but not yet aligned are on disk and are aligned again after a
restart, and snapshots cut after it are cut again, the same, from the re-read source. (Not after every cut or
every alignment: at a snapshot every few hundred events, rewriting the checkpoint each time was most of the
ingest thread's time and held back the next alignment. A restart may thus align, and publish, a few seconds of
snapshots again: publication is at least once, and a replayed version has the same snapshot id and content.)
Only once it is durable is the source told to commit; after a crash the service resumes from it and re-reads the
source from its position, so every accepted event takes effect exactly once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aligner.service.recovery import update_to_state
from snapshots.history import AlignmentHistory
from snapshots.store import SnapshotStore
from stream.records import Source

if TYPE_CHECKING:
    from aligner.service.alignment_worker import AlignmentWorker
    from aligner.service.ingest import Ingest
    from aligner.service.publishing import UpdatePublisher
    from aligner.service.run_summary import RunSummary
    from aligner.service.run_tracker import RunTracker

log = logging.getLogger("dynalign.service")

CHECKPOINT_EVERY_S = 5.0
STATE_AFTER_S = 0.8 * CHECKPOINT_EVERY_S  # the first alignment finished this long after a checkpoint serialises
# the aligner's state for the next one


class Checkpointer:
    """Writes the checkpoint from the state the other parts keep; :attr:`dirty`: something a checkpoint records
    changed since the last one (the loop sets it). ``retain_snapshots``: ``store.retain_snapshots``."""

    def __init__(self, store: SnapshotStore, history: AlignmentHistory, ingest: Ingest, worker: AlignmentWorker,
                 publisher: UpdatePublisher, source: Source, tracker: RunTracker, summary: RunSummary,
                 retain_snapshots: int | None):
        self.store = store
        self.history = history
        self.ingest = ingest
        self.worker = worker
        self.publisher = publisher
        self.source = source
        self.tracker = tracker
        self.summary = summary
        self.retain_snapshots = retain_snapshots
        self.dirty = False
        self.last_at = time.monotonic()  # when the last checkpoint was written (time.monotonic())

    def due(self) -> bool:
        return self.dirty and time.monotonic() - self.last_at > CHECKPOINT_EVERY_S

    def state_wanted(self, serialised_at: float) -> bool:
        """Whether the next checkpoint is near and the aligner's state has not been serialised since the last
        one (``serialised_at``: when it last was, ``time.monotonic()``)."""
        return time.monotonic() - self.last_at >= STATE_AFTER_S and serialised_at < self.last_at

    def checkpoint(self, commit: bool = True) -> None:
        """Make everything applied so far durable, in the order of quix-streams' ``Checkpoint.commit()``, each
        step relying on the ones before it:

        0. bring the aligner's state up to date if the aligner is idle (:meth:`AlignmentWorker.checkpoint_state`);
        1. sync the store: the snapshots and event-log lines the checkpoint counts are on disk before it;
        2. flush the dead letters durably: the checkpoint records their size, which a restart truncates to;
        3. write the checkpoint;
        4. compact (``store.retain_snapshots``): only what the checkpoint just written no longer needs;
        5. commit the source position (``commit``): only once the checkpoint holding it is durable, else a crash
           would skip the events between;
        6. rewrite ``metrics.json`` (``commit``), which reports what is now durable.

        ``commit=False``: Kafka is revoking partitions and commits itself (see :meth:`on_revoke`).
        """
        started = time.perf_counter()
        aligner = self.worker.checkpoint_state()
        self.store.sync()
        dead = self.ingest.dead
        dead.flush(durable=True)
        pending = self.publisher.pending
        self.store.write_checkpoint({
            "cutter": self.ingest.cutter.to_state(),
            "aligner": aligner.state,
            "aligned_through": aligner.through,
            "model_version": aligner.model_version,
            "snapshot_id": self.worker.last_snapshot,
            "position": self.ingest.position,
            "pending_update": None if pending is None else update_to_state(pending),
            "net_partitions": {net: sorted(parts) for net, parts in self.ingest.net_partitions.items()},
            "deadletter_size": dead.durable_size,
            "written_at": time.time(),
        })
        self.dirty = False
        self.last_at = time.monotonic()
        self._compact(aligner.through)
        if commit:
            if self.ingest.position is not None:
                self.source.commit(self.ingest.position)
            self.tracker.write_metrics()
        self.summary.checkpoint_s += time.perf_counter() - started

    def on_revoke(self) -> dict | None:
        """Kafka is taking partitions away: make everything applied so far durable, and say up to where.

        Runs on kafka-python's IO thread while the main thread waits in ``poll``; a job in flight only touches
        the aligner, whose last finished state is what the checkpoint stores.
        """
        self.checkpoint(commit=False)
        return self.ingest.position

    def _compact(self, aligned_through: int | None) -> None:
        """Retention: never a snapshot still to align; history follows the store."""
        if self.retain_snapshots is None:
            return
        # The checkpoint's aligner state needs every snapshot after the one it was taken at.
        dropped = self.store.compact(keep_from=(aligned_through or 0) + 1)
        if dropped["dropped"]:
            kept = self.store.list_snapshots()
            versions = self.history.compact(kept[0]["id"]) if kept else 0
            log.info("retention", extra={"fields": {"snapshots_dropped": len(dropped["dropped"]),
                                                     "log_lines_dropped": dropped["log_lines_dropped"],
                                                     "versions_dropped": versions}})
