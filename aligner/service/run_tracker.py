"""How far the run has got, for the loop and for operators, in its own module because it only reads the other
parts: when ``--until-idle`` ends the run, the consumer lag reported now and then, ``STATE/metrics.json`` for
dashboards and health checks, and what a run that ended may have got wrong."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from aligner.config import parse_pairs
from stream.deadletter import DeadLetterSink
from stream.records import PartitionedSource, Source

if TYPE_CHECKING:
    from aligner.service.alignment_worker import AlignmentWorker
    from aligner.service.metrics import ServiceMetrics
    from aligner.service.publishing import UpdatePublisher
    from aligner.service.run_summary import RunSummary

log = logging.getLogger("dynalign.service")

GROUP_RECHECK_S = 2.0  # --until-idle with partitions of the topic left to the group: how often to look again
LAG_REPORT_EVERY_S = 30.0


class RunTracker:
    """``until_idle_s``: stop once nothing happened for that long: no record came, nothing is left to align, and
    every owned Kafka partition is caught up (``None``: never; a file source ends at its end anyway)."""

    def __init__(self, until_idle_s: float | None, source: Source, source_url: str, state_dir: Path,
                 summary: RunSummary, metrics: ServiceMetrics, dead: DeadLetterSink, worker: AlignmentWorker,
                 publisher: UpdatePublisher):
        self.until_idle_s = until_idle_s
        self.source = source
        self.source_url = source_url
        self.state_dir = state_dir
        self.summary = summary
        self.metrics = metrics
        self.dead = dead
        self.worker = worker
        self.publisher = publisher
        self.idle_since = time.monotonic()
        self.input_ended = False  # --until-idle stopped the run: the end of input, as a file's end is
        self.announced_backlog: set[int] = set()
        self.last_lag_report = time.monotonic()

    def records_came(self) -> None:
        self.idle_since = time.monotonic()

    def idle_for_good(self, work_left: bool) -> bool:
        """Whether ``--until-idle`` ends the run now: idle long enough here (``work_left``: snapshots to align,
        an alignment or a refresh in flight), and the topic holds nothing the group has yet to take."""
        if self.until_idle_s is None:
            return False
        if work_left or not self._caught_up():
            self.idle_since = time.monotonic()
            return False
        if time.monotonic() - self.idle_since < self.until_idle_s:
            return False
        if self._group_backlog():  # not the end of the input: partitions of the topic still hold work for the group
            self.idle_since = time.monotonic() - self.until_idle_s + min(GROUP_RECHECK_S, self.until_idle_s)
            return False
        log.info(f"idle for {self.until_idle_s:g} s: stopping; the open window is cut as at the end of input")
        self.input_ended = True
        return True

    def _caught_up(self) -> bool:
        """Every owned partition caught up and at its end (a file: nothing came)."""
        if not isinstance(self.source, PartitionedSource):
            return True
        owned, lag = self.source.assigned, self.source.lag()
        return bool(owned) and set(lag) == owned and not any(lag.values()) and self.source.live_partitions() == owned

    def _group_backlog(self) -> dict[int, int]:
        """What :meth:`stream.kafka_source.KafkaSource.group_backlog` says (nothing for a file), announced once per set of
        partitions: ``--until-idle`` waits for it, so a worker restarted beside members killed without leaving (or
        beside slower live ones) does not take its share of the topic for the end of the input."""
        left = self.source.group_backlog() if isinstance(self.source, PartitionedSource) else {}
        if left and set(left) != self.announced_backlog:
            self.announced_backlog = set(left)
            log.info(f"idle here, but partitions {sorted(left)} of the topic still hold {sum(left.values())} records "
                     "the group has not committed (other members', or members killed without leaving, whose "
                     "partitions come back after stream.kafka_session_timeout_ms): waiting for them")
        return left

    def report_lag(self) -> None:
        """The ``consumer lag`` line, every ``LAG_REPORT_EVERY_S`` (Kafka only)."""
        if not isinstance(self.source, PartitionedSource) or time.monotonic() - self.last_lag_report < LAG_REPORT_EVERY_S:
            return
        self.last_lag_report = time.monotonic()
        self.summary.lag = self.source.lag()
        log.info("consumer lag", extra={"fields": {f"partition:{p}": n for p, n in sorted(self.summary.lag.items())}})

    def write_metrics(self) -> None:
        """``STATE/metrics.json``, rewritten at every checkpoint, for dashboards and health checks."""
        partitioned = self.source if isinstance(self.source, PartitionedSource) else None
        if partitioned is not None:
            self.summary.lag = partitioned.lag()
        s = self.summary
        live = self.source.live_partitions()
        publisher = self.publisher
        metrics = {
            "at": time.time(), "source": self.source_url, "records": s.records, "accepted": s.accepted, "restored": s.restored,
            "dead_letters": self.dead.count, "snapshots": s.snapshots, "published": s.published,
            "versions": s.versions, "aligned_through": self.worker.aligned_through, "to_align": len(self.worker.backlog),
            "lag": {str(p): n for p, n in sorted(s.lag.items())},
            "assigned": [] if partitioned is None else sorted(partitioned.assigned),
            "live": None if live is None else sorted(live),
            "kafka_reachable": None if partitioned is None else partitioned.reachable,
            "redis_pending": publisher.pending is not None,
            "quality": self.metrics.quality,  # prequential, per pair, as of the last alignment
            "redis_down_s": (None if publisher.down_since is None
                             else round(time.monotonic() - publisher.down_since, 1)),
        }
        path = self.state_dir / "metrics.json"
        temp = path.with_name(".metrics.json.tmp")
        temp.write_text(json.dumps(metrics, indent=1))
        os.replace(temp, path)

    def warn_about_the_run(self, pairs: str, networks_seen: Collection[str], resumed_from: dict) -> None:
        """What a run that ended normally may still have got wrong because of the way it was started: ``pairs``
        (``service.pairs``) naming networks no event mentioned, or a file resumed at its end (``resumed_from``)."""
        pairs_named = parse_pairs(pairs)
        if pairs_named:
            seen = set(networks_seen)
            never = sorted({n for pair in pairs_named for n in pair} - seen)
            if never:
                log.warning(f"service.pairs {pairs!r} names network(s) {', '.join(never)} that no event mentioned "
                            f"(networks seen: {', '.join(sorted(seen)) or 'none'}): their pairs were not aligned; "
                            "fix --pairs, or leave it out to align every pair with anchors")
        if "line" in resumed_from and self.summary.records == 0:
            log.warning(f"no new records: state dir {self.state_dir} had already read {self.source_url} up to line "
                        f"{resumed_from.get('line')}; to process it again, pass a new --state DIR")
