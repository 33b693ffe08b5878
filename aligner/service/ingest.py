"""Ingestion: what the service's main thread does with a polled batch before any alignment, in its own module
because it is the service's hot path (tens of thousands of events a second) and its only writer of the event log.

Each record is validated (a bad one goes to the dead-letter sink with the reason), an accepted event is logged,
the partition it came from is noted for its network (who may publish its pairs, see
:class:`aligner.service.publishing.UpdatePublisher`) and it is fed to the snapshot cutter; what the cutter
completes is handed back, to be saved and queued for the aligner. The cutter's lanes follow the Kafka partitions
this worker reads, and events it refused go to the dead letters too.
"""

from __future__ import annotations

import itertools
import logging
import operator
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from snapshots.cutter import SnapshotCutter
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore
from stream.deadletter import DeadLetterSink
from stream.events import Event, InvalidEvent, parse_event
from stream.records import PartitionedSource, Record, Source

if TYPE_CHECKING:
    from aligner.service.metrics import ServiceMetrics
    from aligner.service.run_summary import RunSummary

log = logging.getLogger("dynalign.service")


class Ingest:
    """Turns polled records into cut snapshots; :attr:`position` is the source position of the last record
    applied (what a checkpoint records), :attr:`resumed_from` the one the run started at (``{}``: the start)."""

    def __init__(self, cutter: SnapshotCutter, store: SnapshotStore, dead: DeadLetterSink,
                 net_partitions: dict[str, set[int]], position: dict | None, summary: RunSummary,
                 metrics: ServiceMetrics, lateness_s: float, progress: bool):
        self.cutter = cutter
        self.store = store
        self.dead = dead
        self.net_partitions = net_partitions  # shared with the publisher, which reads it
        self.position = position
        self.resumed_from = position or {}
        self.summary = summary
        self.metrics = metrics
        self.lateness_s = lateness_s
        self.bar = _progress(progress)
        self.late_before = cutter.stats["late"]  # the run's own late events are counted and warned about
        self.duplicates_before = cutter.stats["duplicates"]
        self.warned_late = False

    def ingest(self, records: list[Record]) -> list[Snapshot]:
        """Validate a polled batch, log the accepted events and feed them to the cutter; returns what it cut.

        Per event this is the hot loop of the service (tens of thousands of events a second), hence the locals
        and one :meth:`SnapshotCutter.offer_all` per batch, fed by a generator: each event is applied as soon as
        it is validated and freed right after, so a batch's events never pile up for the garbage collector to
        scan and promote (with torch's objects in the heap, every full collection costs a few hundred ms).
        """
        started = time.perf_counter()
        summary, cutter, dead, net_partitions = self.summary, self.cutter, self.dead, self.net_partitions
        accepted_lines: list[str] = []
        counts = [0, 0]  # accepted, restored
        restoring_only = True
        offered_before = cutter.offered

        def validated(run: Iterable[Record]) -> Iterator[Event]:
            nonlocal restoring_only
            add_line = accepted_lines.append
            for value, _, origin, _, partition, restoring in run:
                restoring_only &= restoring
                try:
                    event = parse_event(value)
                except InvalidEvent as e:
                    dead.write(value, e.reason, origin, restored=restoring)  # restored: rejected once already
                    continue
                add_line(event.to_json())
                counts[restoring] += 1
                if partition is not None:
                    parts = net_partitions.get(event.net)
                    if parts is None:
                        net_partitions[event.net] = {partition}
                    elif partition not in parts:
                        parts.add(partition)
                yield event

        # One lane per partition (a file is one), so that a partition read ahead of another does not make the
        # other's events late; a Kafka batch comes in partition order, so each partition is one run.
        snapshots = []
        for partition, run in itertools.groupby(records, key=operator.attrgetter("partition")):
            snapshots += cutter.offer_all(validated(run), partition)
        summary.accepted += counts[0]
        summary.restored += counts[1]
        self.store.append_events(accepted_lines)
        self._rejected_to_dead_letters(restored=restoring_only)
        self.position = records[-1].position
        summary.records += len(records)
        summary.ingest_s += time.perf_counter() - started
        self.metrics.batch(cutter.offered, offered_before, started)
        if self.bar is not None:  # a tqdm bar without a total has no truth value
            self.bar.update(len(records))
        self._warn_late()
        return snapshots

    def track_lanes(self, source: Source) -> list[Snapshot]:
        """Tell the cutter which partitions this worker reads and which are caught up (lag 0 at their end), so
        the event-time watermark waits for the ones behind and not for the idle ones (see ``set_lanes``);
        returns what that lets it cut."""
        if not isinstance(source, PartitionedSource):
            return []  # a file or stdin: one lane, the cutter's default
        assigned = source.assigned
        if not assigned:
            return []  # not in the group yet, or between assignments: forgetting every lane would release everything
        snapshots = self.cutter.set_lanes(assigned, {p for p, n in source.lag().items() if n == 0})
        self._rejected_to_dead_letters(restored=not source.live_partitions())
        self._warn_late()
        return snapshots

    def flush(self) -> list[Snapshot]:
        """The end of the input: the open window cut as well; returns what was cut."""
        snapshots = self.cutter.flush()
        self._rejected_to_dead_letters(restored=False)
        self._warn_late()
        return snapshots

    def complete_summary(self) -> None:
        """The run summary's counts that only ingestion's parts keep, as the run ends."""
        summary, stats = self.summary, self.cutter.stats
        summary.dead_letters = self.dead.count
        summary.cutter = dict(stats)
        summary.late = stats["late"] - self.late_before
        summary.duplicates = stats["duplicates"] - self.duplicates_before

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _rejected_to_dead_letters(self, restored: bool) -> None:
        """Events the graph refused when the cutter applied them (after lateness buffering) go to the sink too;
        ``restored``: they came from partitions being restored (see :meth:`DeadLetterSink.write`)."""
        for event, reason in self.cutter.drain_rejected():
            self.dead.write(event.to_json(), reason, f"event {event.id or '?'} at t={event.time:g}",
                            restored=restored)

    def _warn_late(self) -> None:
        """Say once per run that events came too late for their window (the summary counts them all)."""
        late = self.cutter.stats["late"] - self.late_before
        if late and not self.warned_late:
            self.warned_late = True
            log.warning(f"{late} event(s) arrived after their event-time window was cut and went into the open "
                        f"window instead (lateness {self.lateness_s:g} s); if the source delivers events out of "
                        "order by more than that, raise --lateness (snapshots.lateness_seconds); the run summary "
                        "counts them (late)")


def _progress(enabled: bool) -> Any:
    """A tqdm bar of the events read, on a terminal when asked for; else ``None``."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit="ev", desc="events", file=sys.stderr, smoothing=0.1)
