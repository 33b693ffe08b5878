"""The service loop: source → validation → snapshots → aligner → Redis, with checkpoints that lose nothing.

The main thread polls a batch, validates each record (bad ones go to the dead-letter sink with the reason),
logs accepted events and feeds the snapshot cutter; every snapshot it completes is saved and queued for the
aligner. The aligner runs in a worker thread while the main thread keeps polling: a Kafka consumer thus
stays in its group (``max_poll_interval_ms`` counts time between polls, and slow poll loops are the classic
cause of ``CommitFailedError`` and rebalance storms) and handles rebalances while the model adapts. Ingestion
goes on meanwhile, and snapshots queue; on a live source the aligner takes all of them as one catch-up step
(:func:`coalesce`), and the source pauses only when ``service.max_backlog`` wait. When an alignment ends its
update is published, the newest one winning while Redis is away. When nothing waits and the stream has been
quiet for a while, the aligner thread spends its time on the meta-update iterations the last adaptation left
owed (never while snapshots come faster than an iteration takes: each new one would wait behind it).

A checkpoint holds the graph and cutter state, the aligner's state as of the last snapshot it finished
(``aligned_through``), the update Redis has not taken yet, the partitions each network's events came from,
and the source position. It can be written at any moment (every ``CHECKPOINT_EVERY_S``, when Kafka revokes
partitions, at exit) because snapshots cut but not yet aligned are on disk and are aligned again after a
restart, and snapshots cut after it are cut again, the same, from the re-read source. (Not after every cut or
every alignment: at a snapshot every few hundred events, rewriting the checkpoint each time was most of the
ingest thread's time and held back the next alignment. A restart may thus align, and publish, a few seconds of
snapshots again: publication is at least once, and a replayed version has the same snapshot id and content.)
Only once it is durable is the source told
to commit; after a crash the service resumes from it and re-reads the source from its position, so every
accepted event takes effect exactly once. SIGINT/SIGTERM finish the current batch and alignment first.

On a live source the aligner never holds the stream back for its heavy steps (an adaptation, a realignment,
anchors joining the coordinates: a second or more each, where an incremental step takes a tenth): it takes the
incremental step and notes what was due (``Aligner.on_snapshot(..., defer=True)``); a copy of the aligner
(``Aligner.fork``) does the heavy work in a background thread (``Aligner.refresh``) while incremental steps go
on publishing; the copy then replaces the aligner and catches up on the snapshots aligned meanwhile in one
step, whose alignments are published as usual (``service.refresh``: ``live`` by default, ``always``, ``never``).

With Kafka, a worker publishes a pair only while it owns, caught up, every partition that carried the two
networks' events (see :class:`stream.kafka_source.KafkaSource`): a pair is published by one worker at a time, and
never from a partial history.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import operator
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterable, Iterator

from aligner.config import Config, mask_url, parse_pairs
from aligner.engine.factory import build_aligner
from aligner.publish.embedded_redis import redis_server_binary
from aligner.publish.redis_alignments import RedisPublisher
from aligner.runtime import aligner_threads
from aligner.service.connections import kafka_settings, redis_for
from aligner.service.jobs import JobResult, Queued, coalesce
from aligner.service.metrics import ServiceMetrics, Step
from aligner.service.publishing import UpdatePublisher
from aligner.service.recovery import loadable, report_repair, update_from_state, update_to_state
from aligner.service.run_settings import (is_other_file, read_run_settings, resume_config, run_record, started,
                                          write_run_settings)
from aligner.service.run_summary import RunSummary
from aligner.service.savepoint import open_savepoint, seed_state_dir
from aligner.update import AlignmentUpdate
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.history import AlignmentHistory
from snapshots.repair import repair_snapshots
from snapshots.snapshot import Snapshot
from snapshots.store import SnapshotStore
from stream.deadletter import DeadLetterSink
from stream.events import Event, InvalidEvent, parse_event
from stream.kafka_settings import parse_kafka_url
from stream.records import Record, Source
from stream.sources import check_source_url, open_source

if TYPE_CHECKING:
    from aligner.engine.aligner import Aligner

log = logging.getLogger("dynalign.service")

CHECKPOINT_EVERY_S = 5.0
STATE_AFTER_S = 0.8 * CHECKPOINT_EVERY_S  # the first alignment finished this long after a checkpoint serialises
# the aligner's state for the next one
LEARN_QUIET_S = 0.5  # at least this long without a new snapshot before a meta-update iteration starts
ALIGN_POLL_S = 0.2  # while the aligner works: how often the paused source is polled (and the job checked)
# While the aligner or a refresh works and the source is not paused: the poll's timeout, so events are ingested
# and cut as they arrive (the next job starts with them) and a finished job is collected within this long.
BUSY_POLL_S = 0.02
GROUP_RECHECK_S = 2.0  # --until-idle with partitions of the topic left to the group: how often to look again
LAG_REPORT_EVERY_S = 30.0
# Added to the background refresh thread's niceness: the most there is, so it takes only the CPU left over
# (freshness at +10 and +19: docs/benchmarks.md, Freshness).
REFRESH_NICENESS = 19
REFRESH_CATCH_UPS = 3  # at most this many catch-up steps of a refreshed fork in the background
# The GIL's switch interval while the service runs (Python's default: 5 ms). Incremental steps, ingestion and a
# background refresh share it; at 5 ms an incremental step's many short torch calls each waited up to that for
# the GIL whenever the refresh held it (freshness at 5 ms and 0.5 ms: docs/benchmarks.md, Freshness).
GIL_SWITCH_S = 0.0005
# What a text log line of an aligned snapshot shows at INFO (the rest of the step's stats only at DEBUG and in
# JSON logs): which path and why, how good the published alignments are on the anchors that arrived, how long.
ALIGNED_HEADLINE = ("path", "reason", "deferred", "anchors", "pseudo_anchors", "prequential_hits@1",
                    "prequential_mrr", "drifts")


def _lower_priority() -> None:
    """Run the calling thread at a lower scheduling priority (Linux niceness applies per thread), so that the
    background refresh takes only the CPU that ingestion and incremental steps leave: they decide freshness.
    (docs/benchmarks.md, Freshness.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFRESH_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the refresh competes evenly
        pass


class AlignmentService:
    """``until_idle_s``: stop once nothing happened for that long: no record came, nothing is left to align, and
    every owned Kafka partition is caught up (backfills, benchmarks, tests); a file source ends at its end anyway.

    ``explicit``: the ``"section.key"`` settings the user gave (flags, environment, file); a resume takes the state
    dir's recorded settings for the others (:mod:`aligner.service.run_settings`). ``None``: every setting counts as given.
    """

    def __init__(self, cfg: Config, source_url: str, progress: bool = False, until_idle_s: float | None = None,
                 savepoint: Path | None = None, explicit: Collection[str] | None = None):
        self.cfg = cfg
        self.explicit = explicit
        self.savepoint = savepoint
        self.source_url = source_url
        self.progress = progress
        self.until_idle_s = until_idle_s
        self.state_dir = Path(cfg.service.state_dir)
        self.stop_requested = False
        self.summary = RunSummary()  # live counts; complete when run() returns
        self.metrics = ServiceMetrics(self)  # recorded always, served over HTTP when service.metrics_port is set

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stop_requested:
            log.info("stop requested: finishing the current batch and alignment, then checkpointing")
        self.stop_requested = True

    def run(self) -> RunSummary:
        started = time.perf_counter()
        self.main_thread = threading.current_thread()
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be handled there
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig in previous:
                signal.signal(sig, self.request_stop)
        try:
            self._open()
            self._loop()
            if not self.stop_requested and (self.source.exhausted or self.input_ended):
                for snap in self.cutter.flush():
                    self._queue(snap)
                self._rejected_to_dead_letters(self.cutter, self.dead, restored=False)
                self._warn_late()
                while self.backlog or self.job is not None or self.refresh is not None:
                    if self.job is None and self.backlog:
                        self._align_next()
                    if self.job is not None:
                        self._collect(wait_s=None if self.refresh is None else ALIGN_POLL_S)
                    else:
                        wait([self.refresh])
                    self._adopt_refreshed()
            elif self.job is not None:
                self._collect(wait_s=None)
            self._publish_pending(now=True)
            self._checkpoint()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        summary = self.summary
        summary.dead_letters = self.dead.count
        summary.wall_s = time.perf_counter() - started
        summary.cutter = dict(self.cutter.stats)
        summary.late = self.cutter.stats["late"] - self.late_before
        summary.duplicates = self.cutter.stats["duplicates"] - self.duplicates_before
        if self.publisher.pending is None:
            summary.redis_error = None
        self._warn_about_the_run()
        return summary

    def _warn_about_the_run(self) -> None:
        """What a run that ended normally may still have got wrong because of the way it was started."""
        if self.pairs_named:
            seen = set(self.cutter.graph.networks)
            never = sorted({n for pair in self.pairs_named for n in pair} - seen)
            if never:
                log.warning(f"service.pairs {self.cfg.service.pairs!r} names network(s) {', '.join(never)} that no "
                            f"event mentioned (networks seen: {', '.join(sorted(seen)) or 'none'}): their pairs were "
                            "not aligned; fix --pairs, or leave it out to align every pair with anchors")
        if self.resumed_file and self.summary.records == 0:
            log.warning(f"no new records: state dir {self.state_dir} had already read {self.source_url} up to line "
                        f"{self.position_at_start.get('line')}; to process it again, pass a new --state DIR")

    # -- start and stop ----------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Recover the state dir and connect everything, in this order: 1. settle the configuration (a
        savepoint's or the state dir's recorded settings), 2. the process and state-dir settings, 3. recover the
        store, cutter and aligner from the newest checkpoint, 4. connect Redis, the dead-letter sink and the
        source, 5. the worker threads and the loop's bookkeeping. The attributes set here are the run's state."""
        seed, recorded = self._settle_config()
        self._prepare_process()
        checkpoint, pending = self._recover(seed, recorded)
        self._connect(checkpoint, pending)
        self._start_workers()

    def _settle_config(self) -> tuple[dict | None, dict | None]:
        """Before anything is written or loaded: the savepoint is intact and may seed this dir, and a resume
        takes the state dir's (or savepoint's) recorded settings or refuses a real change of them. Returns the
        savepoint's contents (``None``: none given) and the recorded run settings."""
        check_source_url(self.source_url)
        seed = open_savepoint(self.savepoint, self.state_dir) if self.savepoint is not None else None
        recorded = seed.get("run") if seed is not None else read_run_settings(self.state_dir)
        if recorded and (seed is not None or started(self.state_dir)):
            self.cfg = resume_config(self.cfg, recorded, self.explicit, self.state_dir, self.source_url)
        return seed, recorded

    def _prepare_process(self) -> None:
        """Torch's threads and the GIL's switch interval for this run (the latter restored by :meth:`_close`),
        and an owner-only state dir."""
        import torch  # loaded when a run starts, not by commands that share this module

        cfg = self.cfg
        torch.set_num_threads(aligner_threads(cfg.service.threads))
        self.switch_interval = sys.getswitchinterval()  # restored by _close: the process may go on without us
        sys.setswitchinterval(GIL_SWITCH_S)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Owner-only: the event log, dead letters, alignments and the Redis dump hold the users' data, and
        # files in it are created with the default umask.
        try:
            os.chmod(self.state_dir, 0o700)
        except OSError as e:  # not ours (a shared mount): say so, run on
            log.warning(f"could not make the state dir {self.state_dir} owner-only ({e}): other local users may "
                        "read the events and alignments in it")

    def _recover(self, seed: dict | None, recorded: dict | None) -> tuple[dict, AlignmentUpdate | None]:
        """The store (seeded from the savepoint, if any), its damaged snapshots repaired, and the cutter, the
        aligner and the loop's position as of the newest checkpoint; returns the checkpoint ({}: none) and the
        update it had not published yet."""
        cfg = self.cfg
        self.store = store = SnapshotStore(self.state_dir, cfg.store.base_every, cfg.store.retain_snapshots)
        if self.savepoint is not None:
            seeded = seed_state_dir(seed, store)
            log.info(f"state dir seeded from savepoint {self.savepoint} (snapshot {seeded['snapshot_id']}, "
                     f"model {seeded['model_version']})")
        checkpoint = store.recover() or {}
        store.forget_after(checkpoint.get("snapshot_id"))  # cut after the checkpoint: they are cut again
        self.history = AlignmentHistory(self.state_dir / "history", cfg.store.base_every)
        policy = SnapshotPolicy(**dataclasses.asdict(cfg.snapshots))  # the same fields, by design
        # The policy the history was cut with is the checkpoint's (already read), not necessarily today's config.
        report_repair(repair_snapshots(store, SnapshotPolicy(**checkpoint["cutter"]["policy"]) if checkpoint
                                       else policy))
        self.cutter = SnapshotCutter.from_state(checkpoint["cutter"], policy) if checkpoint else SnapshotCutter(policy)
        self.late_before = self.cutter.stats["late"]  # the run's own late events are counted and warned about
        self.duplicates_before = self.cutter.stats["duplicates"]
        self.warned_late = False
        self.input_ended = False  # --until-idle stopped the run: the end of input, as a file's end is
        self.announced_backlog: set[int] = set()
        self.aligner = build_aligner(cfg)
        self.aligner_state: bytes | None = checkpoint.get("aligner")
        if self.aligner_state:
            self.aligner.load_state_bytes(self.aligner_state)
        self.model_version = self.state_version = checkpoint.get("model_version", self.aligner.model_version())
        self.last_snapshot: int | None = checkpoint.get("snapshot_id")
        self.aligned_through: int | None = checkpoint.get("aligned_through", self.last_snapshot)
        # The aligner state is serialised only when a checkpoint is near (it costs as much as a small incremental
        # step): ``aligner_state`` is the aligner as of snapshot ``state_through``, which may trail
        # ``aligned_through``; a checkpoint records the pair, and a restart aligns what lies between again.
        self.state_through: int | None = self.aligned_through
        self.position: dict | None = checkpoint.get("position")
        if self.position and recorded and is_other_file(recorded.get("source"), self.source_url):
            log.warning(f"{self.source_url} is not the file state dir {self.state_dir} was reading "
                        f"({recorded['source'].get('url')}): reading it from its first line")
            self.position = None
        self.position_at_start = self.position or {}
        self.resumed_file = bool(self.position) and "line" in self.position
        self.pairs_named = parse_pairs(cfg.service.pairs)
        self.net_partitions: dict[str, set[int]] = {
            net: set(parts) for net, parts in (checkpoint.get("net_partitions") or {}).items()}
        pending = update_from_state(checkpoint["pending_update"]) if checkpoint.get("pending_update") else None
        # Snapshots cut before the checkpoint but not aligned then: aligned again, in order.
        self.backlog: deque[Queued] = deque(
            Queued(snapshot, None, time.monotonic()) for snapshot in loadable(
                store, [e["id"] for e in store.manifest_entries()
                        if (self.aligned_through or 0) < e["id"] <= (self.last_snapshot or 0)]))
        if checkpoint:
            log.info("resuming from checkpoint", extra={"fields": {
                "snapshot": self.last_snapshot, "aligned_through": self.aligned_through, "position": self.position,
                "to_align": len(self.backlog), "unpublished": pending is not None}})
        return checkpoint, pending

    def _connect(self, checkpoint: dict, pending: AlignmentUpdate | None) -> None:
        """Redis (configured or embedded) and the publisher, the dead-letter sink, the source at the checkpoint's
        position; then the run settings are recorded."""
        cfg = self.cfg
        client, self.redis_server = redis_for(cfg)
        self.summary.redis_url = self.redis_server.url if self.redis_server else cfg.publish.redis_url
        if self.redis_server:
            cli = Path(redis_server_binary()).with_name("redis-cli")
            log.info(f"embedded Redis at {mask_url(self.redis_server.url)} (connect: {cli} -p "
                     f"{self.redis_server.port} --askpass, password in {self.redis_server.directory / 'password'}); "
                     f"data in {self.redis_server.directory}")
        redis_publisher = RedisPublisher(client, cfg.publish.namespace, cfg.publish.retain_versions,
                                         worker=f"{socket.gethostname()}/{os.getpid()}/{self.state_dir.name}")
        # No checkpoint: every record is read again, so the dead letters start over too (else they double);
        # a checkpoint from before dead-letter sizes were recorded leaves the file as it is.
        self.dead = self._dead_letter_sink(checkpoint.get("deadletter_size", None if checkpoint else 0))
        self.source: Source = open_source(self.source_url, position=self.position, kafka=kafka_settings(cfg),
                                          on_revoke=self._on_revoke)
        self.publisher = UpdatePublisher(redis_publisher, self.history, self.source, self.net_partitions,
                                         self.summary, self.metrics, pending)
        write_run_settings(self.state_dir, run_record(cfg, self.source_url))

    def _start_workers(self) -> None:
        """The aligner and refresh threads, and what the loop keeps track of between its steps."""
        cfg = self.cfg
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")
        self.job: Future | None = None
        self.source_paused = False
        self.state_through_at = 0.0  # when the aligner's state was last serialised (time.monotonic())
        # The background refresh: a fork of the aligner doing the heavy work its last step deferred, the
        # snapshots aligned since the fork (to catch up on), and who may publish the fork's own snapshot.
        self.refresh_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh",
                                                   initializer=_lower_priority)
        self.refresh: Future | None = None
        self.refreshing: Aligner | None = None
        self.since_fork: list[Queued] = []
        self.fork_point: Queued | None = None
        # What the ``snapshot refreshed`` log line reports of the refresh in flight (set by _start_refresh).
        self.refresh_of, self.refresh_stats, self.refresh_seconds, self.catch_ups = None, None, 0.0, 0
        live = self.source_url == "-" or self.source_url.startswith("kafka://")
        self.defer_heavy = cfg.service.refresh == "always" or (cfg.service.refresh == "live" and live)
        self.job_covers = 0  # how many queued snapshots the job in flight aligns
        self.last_queued = 0.0  # when the newest snapshot was queued (time.monotonic())
        self.learn_iteration_s = 0.0  # how long the last meta-update iteration took
        self.bar = _progress(self.progress)
        self.dirty = False  # events applied since the last checkpoint
        self.last_checkpoint = self.last_lag_report = time.monotonic()
        if cfg.service.metrics_port is not None:
            port = self.metrics.serve(cfg.service.metrics_host, cfg.service.metrics_port)
            log.info(f"metrics at http://{cfg.service.metrics_host}:{port}/metrics, health at /healthz")

    def _dead_letter_sink(self, truncate_to: int | None) -> DeadLetterSink:
        """The local file, plus the configured topic when the events come from Kafka."""
        path = self.state_dir / "deadletter.jsonl"
        template = self.cfg.stream.dead_letter_topic
        if not self.source_url.startswith("kafka://") or not template:
            return DeadLetterSink(path, truncate_to=truncate_to)
        from stream.producer import kafka_producer

        servers, topic, _ = parse_kafka_url(self.source_url)
        dead_topic = template.format(topic=topic)
        self.dlq_producer = kafka_producer(servers, kafka_settings(self.cfg), linger_ms=50)
        log.info("dead letters go to %s and to Kafka topic %s", path, dead_topic)
        return DeadLetterSink(path, topic=dead_topic, producer=self.dlq_producer, truncate_to=truncate_to)

    def _close(self) -> None:
        """Release whatever :meth:`_open` got to, in reverse order (it may have failed half-way)."""
        for name, close in (("metrics", lambda x: x.close()), ("executor", lambda x: x.shutdown(wait=True)),
                            ("refresh_executor", lambda x: x.shutdown(wait=True)), ("bar", lambda x: x.close()),
                            ("source", lambda x: x.close()), ("dead", lambda x: x.close()),
                            ("dlq_producer", lambda x: x.close()), ("redis_server", lambda x: x.stop())):
            thing = getattr(self, name, None)
            if thing is not None:
                close(thing)
        if hasattr(self, "switch_interval"):
            sys.setswitchinterval(self.switch_interval)

    # -- the loop -------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        cfg = self.cfg.stream
        idle_since = time.monotonic()
        while not self.stop_requested:
            timeout = cfg.poll_timeout_s
            if self.job is not None:
                # A paused or exhausted source answers a poll at once: wait on the job instead of spinning.
                nothing_to_poll = self.source_paused or self.source.exhausted
                self._collect(wait_s=ALIGN_POLL_S if nothing_to_poll else 0.0)
            if self.job is not None or self.refresh is not None:
                timeout = BUSY_POLL_S
            self._adopt_refreshed()
            if self.job is None and self.backlog:
                self._align_next()
                timeout = 0.0
            elif self.job is None and self.refresh is None and self.aligner.meta_due and self._quiet():
                self._learn_next()
            records = self.source.poll(cfg.batch_size, timeout)
            if records:
                self._ingest(records)
            self._track_lanes()
            if records:
                self._throttle()
                idle_since = time.monotonic()
            elif self.source.exhausted and self.job is None and not self.backlog:
                if self.refresh is None:
                    break
                wait([self.refresh], timeout=ALIGN_POLL_S)  # all that is left; an exhausted source polls at once
            elif self.until_idle_s is not None and not self._idle():
                idle_since = time.monotonic()
            elif self.until_idle_s is not None and time.monotonic() - idle_since >= self.until_idle_s:
                left = self._group_backlog()
                if left:  # not the end of the input: partitions of the topic still hold work for the group
                    idle_since = time.monotonic() - self.until_idle_s + min(GROUP_RECHECK_S, self.until_idle_s)
                else:
                    log.info(f"idle for {self.until_idle_s:g} s: stopping; the open window is cut as at the end of "
                             "input")
                    self.input_ended = True
                    break
            self._publish_pending()
            if self.dirty and time.monotonic() - self.last_checkpoint > CHECKPOINT_EVERY_S:
                self._checkpoint()
            self._report_lag()

    def _ingest(self, records: list[Record]) -> None:
        """Validate a polled batch, log the accepted events and feed them to the cutter (then queue what it cut).

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
        self._rejected_to_dead_letters(cutter, dead, restored=restoring_only)
        self.position = records[-1].position
        self.dirty = True
        summary.records += len(records)
        summary.ingest_s += time.perf_counter() - started
        self.metrics.batch(cutter.offered, offered_before, started)
        if self.bar is not None:  # a tqdm bar without a total has no truth value
            self.bar.update(len(records))
        for snap in snapshots:
            self._queue(snap)
        self._warn_late()

    def _track_lanes(self) -> None:
        """Tell the cutter which partitions this worker reads and which are caught up (lag 0 at their end), so
        the event-time watermark waits for the ones behind and not for the idle ones (see ``set_lanes``)."""
        lag_of = getattr(self.source, "lag", None)
        if lag_of is None:
            return  # a file or stdin: one lane, the cutter's default
        assigned = self.source.assigned
        if not assigned:
            return  # not in the group yet, or between assignments: forgetting every lane would release everything
        snapshots = self.cutter.set_lanes(assigned, {p for p, n in lag_of().items() if n == 0})
        self._rejected_to_dead_letters(self.cutter, self.dead, restored=not self.source.live_partitions())
        for snap in snapshots:
            self._queue(snap)
        self._warn_late()

    def _warn_late(self) -> None:
        """Say once per run that events came too late for their window (the summary counts them all)."""
        late = self.cutter.stats["late"] - self.late_before
        if late and not self.warned_late:
            self.warned_late = True
            log.warning(f"{late} event(s) arrived after their event-time window was cut and went into the open "
                        f"window instead (lateness {self.cfg.snapshots.lateness_seconds:g} s); if the source "
                        "delivers events out of order by more than that, raise --lateness (snapshots."
                        "lateness_seconds); the run summary counts them (late)")

    def _queue(self, snap: Snapshot) -> None:
        started = time.perf_counter()
        self.store.save_snapshot(snap, model_version=self.model_version)
        self.metrics.snapshot_cut(snap, time.perf_counter() - started)
        self.summary.snapshots += 1
        self.last_snapshot = snap.id
        self.last_queued = time.monotonic()
        self.backlog.append(Queued(snap, self.source.live_partitions(), self.last_queued))

    def _align_next(self) -> None:
        """Hand the queued snapshots to the aligner thread, as one catch-up step (see :func:`coalesce`).

        The source keeps being read while the aligner works, so the next snapshot is cut meanwhile; it pauses
        only when ``service.max_backlog`` snapshots wait. ``service.coalesce`` says when queued snapshots are
        aligned as one step: ``live`` (the default) for Kafka and stdin, where freshness comes first, not for a
        file being replayed, where every snapshot gets its own alignment and history; ``always``; ``never``.
        """
        mode = self.cfg.service.coalesce
        live = self.source_url == "-" or self.source_url.startswith("kafka://")
        take = len(self.backlog) if mode == "always" or (mode == "live" and live) else 1
        self.job_covers = take
        self.job_started = time.monotonic()
        self.job = self.executor.submit(self._align, coalesce([q.snapshot for q in list(self.backlog)[:take]]))

    def _quiet(self) -> bool:
        """Whether the stream has been quiet long enough for a meta-update iteration: no snapshot queued for
        twice the last iteration's time. A live stream cutting snapshots faster than that never waits behind
        one; the iterations stay owed and run when it pauses, or with the next adaptation."""
        return time.monotonic() - self.last_queued >= max(LEARN_QUIET_S, 2 * self.learn_iteration_s)

    def _learn_next(self) -> None:
        """Nothing waits to be aligned: spend the time on one owed meta-update iteration (a second or so, so a
        snapshot cut meanwhile waits at most that long)."""
        self.job_covers = 0
        self.job = self.executor.submit(self._learn)

    def _learn(self) -> JobResult:
        """In the aligner thread, like :meth:`_align`."""
        started = time.perf_counter()
        self.aligner.learn(1)
        return JobResult(None, self._state_if_due(), self.aligner.model_version(), time.perf_counter() - started)

    def _align(self, snap: Snapshot) -> JobResult:
        """In the aligner thread: the only code that touches the aligner while a job is in flight."""
        started = time.perf_counter()
        update = self.aligner.on_snapshot(snap, defer=self.defer_heavy)
        return JobResult(update, self._state_if_due(), self.aligner.model_version(), time.perf_counter() - started)

    # -- background refresh ---------------------------------------------------------------------------------------

    def _start_refresh(self, aligned: Queued) -> None:
        """The aligner just deferred heavy work on ``aligned`` (and is idle): refresh a fork of it in the
        background while it goes on with incremental steps."""
        self.refreshing = self.aligner.fork()
        self.fork_point, self.since_fork = aligned, []
        self.refresh_of, self.refresh_stats, self.refresh_seconds, self.catch_ups = aligned.snapshot.id, None, 0.0, 0
        self.refresh = self.refresh_executor.submit(self._refresh, self.refreshing)

    @staticmethod
    def _refresh(aligner: Aligner, catch_up: Snapshot | None = None) -> JobResult:
        """In the refresh thread, the only code that touches the fork while it works: the deferred heavy step,
        or (``catch_up``) an incremental step on snapshots aligned since."""
        started = time.perf_counter()
        update = aligner.refresh() if catch_up is None else aligner.on_snapshot(catch_up, defer=True)
        return JobResult(update, None, aligner.model_version(), time.perf_counter() - started)

    def _adopt_refreshed(self) -> None:
        """Once the refresh is done, the fork catches up on the snapshots aligned since it was made: in the
        background too while that leaves more than one to the aligner (up to ``REFRESH_CATCH_UPS`` rounds), so
        the incremental path is held back as little as possible. (Chasing every last snapshot in the background
        kept the refresh thread busy and the incremental steps slower: docs/benchmarks.md, Freshness.) Then,
        with no alignment in flight, the fork becomes the aligner. If nothing is left to catch up on, its
        alignments are published (a refinement of the snapshot last published); else it aligns what is left as
        one step at the head of the backlog, and that step publishes."""
        if self.refresh is None or not self.refresh.done():
            return
        if len(self.since_fork) > 1 and self.catch_ups < REFRESH_CATCH_UPS:
            self._account(self.refresh.result())  # a refresh failure stops the service, like an alignment's
            caught_up, self.since_fork = self.since_fork, []
            self.fork_point, self.catch_ups = caught_up[-1], self.catch_ups + 1
            self.refresh = self.refresh_executor.submit(self._refresh, self.refreshing,
                                                        coalesce([q.snapshot for q in caught_up]))
            return
        if self.job is not None:
            return
        result: JobResult = self.refresh.result()
        self._account(result)
        self.aligner, caught_up, point = self.refreshing, self.since_fork, self.fork_point
        self.refresh, self.refreshing, self.since_fork, self.fork_point = None, None, [], None
        stats = self.refresh_stats
        log.info("snapshot refreshed", extra={
            "fields": {"snapshot": self.refresh_of, "caught_up_to": point.snapshot.id,
                       "refresh_s": round(self.refresh_seconds, 3),
                       **{k: stats[k] for k in ALIGNED_HEADLINE if k in stats}},
            "detail": {**{k: v for k, v in stats.items() if k not in ALIGNED_HEADLINE},
                       "background_catch_ups": self.catch_ups, "left_to_catch_up": len(caught_up)}})
        # The fork is as of its last step: a checkpoint from here on must not claim later snapshots for it.
        self.aligned_through = point.snapshot.id
        self.model_version = result.model_version
        self.dirty = True
        if caught_up:
            last = caught_up[-1]
            self.backlog.appendleft(Queued(coalesce([q.snapshot for q in caught_up]), last.live_partitions,
                                           last.cut_at))
            return
        self.publisher.offer(result.update, point.live_partitions, self.model_version)

    def _account(self, result: JobResult) -> None:
        """Count a refresh-thread job; the first (the heavy step) is what the ``snapshot refreshed`` line reports."""
        self.summary.refresh_s += result.seconds
        self.metrics.step(result.seconds, result.update, Step.REFRESH)
        self.refresh_seconds += result.seconds
        if self.refresh_stats is None:
            self.refresh_stats = result.update.stats

    def _state_if_due(self) -> bytes | None:
        """The aligner's state when the next checkpoint is near and no job has serialised it since the last
        one, or when the run ends; else ``None`` (not needed yet). Once per checkpoint: at several alignments a
        second, every job of the last second serialising the state held each of them back (docs/benchmarks.md,
        Freshness)."""
        near = (time.monotonic() - self.last_checkpoint >= STATE_AFTER_S
                and self.state_through_at < self.last_checkpoint)
        return self._serialise_state() if self.stop_requested or near else None

    def _serialise_state(self) -> bytes:
        started = time.perf_counter()
        self.state_through_at = time.monotonic()
        state = self.aligner.state_bytes()
        self.summary.state_s += time.perf_counter() - started
        return state

    def _collect(self, wait_s: float | None) -> None:
        """If the alignment in flight has finished (waiting up to ``wait_s``), publish it and checkpoint."""
        if self.job is None or not wait([self.job], timeout=wait_s).done:
            return
        result: JobResult = self.job.result()  # an aligner failure stops the service
        update, state, self.model_version = result.update, result.state, result.model_version
        self.job = None
        if not self.job_covers:  # a meta-update: durable with the next periodic checkpoint
            if state is not None:  # the aligner after everything aligned so far, plus the iteration
                self.aligner_state, self.state_through, self.state_version = (state, self.aligned_through,
                                                                                self.model_version)
            self.summary.learn_s += result.seconds
            self.metrics.step(result.seconds, None, Step.META_UPDATE)
            self.learn_iteration_s = result.seconds
            self.dirty = True
            return
        first = self.backlog[0]
        covered = [self.backlog.popleft() for _ in range(self.job_covers)]
        snap, live_at_cut, _ = covered[-1]
        self.aligned_through = snap.id
        if self.refresh is not None:
            self.since_fork += covered
        elif self.aligner.deferred is not None:
            self._start_refresh(Queued(snap, live_at_cut, covered[-1].cut_at))
        if state is not None:
            self.aligner_state, self.state_through, self.state_version = state, snap.id, self.model_version
        self.summary.align_s += result.seconds
        self.metrics.step(result.seconds, update, queued_s=self.job_started - first.cut_at)
        fields = {"snapshot": snap.id, "events": snap.events, "job_s": round(result.seconds, 3)}
        detail = {**{f"nodes:{n}": int(s.alive.sum()) for n, s in snap.networks.items()},
                  "snapshots": self.job_covers, "queued_s": round(self.job_started - first.cut_at, 3)}
        if update is None:
            log.info("snapshot cut", extra={"fields": fields, "detail": detail})
        else:
            stats = update.stats
            log.info("snapshot aligned", extra={
                "fields": {**fields, **{k: stats[k] for k in ALIGNED_HEADLINE if k in stats}},
                "detail": {**detail, **{k: v for k, v in stats.items() if k not in ALIGNED_HEADLINE}}})
            self.publisher.offer(update, live_at_cut, self.model_version,
                                 skipped_why="its partitions were not caught up here when the snapshot was cut")
        self.dirty = True  # durable with the next periodic checkpoint: until then a restart aligns it again
        self._throttle()

    def _throttle(self) -> None:
        """Pause the source while ``service.max_backlog`` snapshots wait for the aligner; resume below it."""
        self.source_paused = len(self.backlog) >= self.cfg.service.max_backlog
        if self.source_paused:
            self.source.pause()
        else:
            self.source.resume()

    def _group_backlog(self) -> dict[int, int]:
        """What :meth:`stream.kafka_source.KafkaSource.group_backlog` says (nothing for a file), announced once per set of
        partitions: ``--until-idle`` waits for it, so a worker restarted beside members killed without leaving (or
        beside slower live ones) does not take its share of the topic for the end of the input."""
        backlog_of = getattr(self.source, "group_backlog", None)
        left = backlog_of() if backlog_of is not None else {}
        if left and set(left) != self.announced_backlog:
            self.announced_backlog = set(left)
            log.info(f"idle here, but partitions {sorted(left)} of the topic still hold {sum(left.values())} records "
                     "the group has not committed (other members', or members killed without leaving, whose "
                     "partitions come back after stream.kafka_session_timeout_ms): waiting for them")
        return left

    def _idle(self) -> bool:
        """Nothing to align, and every owned partition caught up and at its end (a file: nothing came)."""
        if self.backlog or (self.job is not None and self.job_covers) or self.refresh is not None:
            return False  # learning is background work; a refresh has alignments to publish
        lag_of = getattr(self.source, "lag", None)
        if lag_of is None:
            return True
        owned, lag = self.source.assigned, lag_of()
        return bool(owned) and set(lag) == owned and not any(lag.values()) and self.source.live_partitions() == owned

    def _publish_pending(self, now: bool = False) -> None:
        if self.publisher.publish(self.model_version, now=now):
            self.dirty = True  # the checkpoint must record what is left to publish

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _checkpoint(self, commit: bool = True) -> None:
        started = time.perf_counter()
        if (self.job is None and self.state_through != self.aligned_through
                and threading.current_thread() is self.main_thread):
            # The aligner is idle (no job, and this is the thread that submits them): bring its state up to date.
            self.aligner_state, self.state_through = self._serialise_state(), self.aligned_through
            self.state_version = self.model_version
        self.store.sync()
        self.dead.flush(durable=True)
        self.store.write_checkpoint({
            "cutter": self.cutter.to_state(),
            "aligner": self.aligner_state,
            "aligned_through": self.state_through,
            "model_version": self.state_version,
            "snapshot_id": self.last_snapshot,
            "position": self.position,
            "pending_update": None if self.publisher.pending is None else update_to_state(self.publisher.pending),
            "net_partitions": {net: sorted(parts) for net, parts in self.net_partitions.items()},
            "deadletter_size": self.dead.durable_size,
            "written_at": time.time(),
        })
        self.dirty = False
        self.last_checkpoint = time.monotonic()
        self._compact()
        if commit:
            if self.position is not None:
                self.source.commit(self.position)
            self._write_metrics()
        self.summary.checkpoint_s += time.perf_counter() - started

    def _compact(self) -> None:
        """Retention (``store.retain_snapshots``): never a snapshot still to align; history follows the store."""
        if self.cfg.store.retain_snapshots is None:
            return
        # The checkpoint's aligner state needs every snapshot after the one it was taken at.
        first_needed = (self.state_through or 0) + 1
        dropped = self.store.compact(keep_from=first_needed)
        if dropped["dropped"]:
            kept = self.store.list_snapshots()
            versions = self.history.compact(kept[0]["id"]) if kept else 0
            log.info("retention", extra={"fields": {"snapshots_dropped": len(dropped["dropped"]),
                                                     "log_lines_dropped": dropped["log_lines_dropped"],
                                                     "versions_dropped": versions}})

    def _on_revoke(self) -> dict | None:
        """Kafka is taking partitions away: make everything applied so far durable, and say up to where.

        Runs on kafka-python's IO thread while the main thread waits in ``poll``; a job in flight only touches
        the aligner, whose last finished state is what the checkpoint stores.
        """
        self._checkpoint(commit=False)
        return self.position

    @staticmethod
    def _rejected_to_dead_letters(cutter: SnapshotCutter, dead: DeadLetterSink, restored: bool) -> None:
        """Events the graph refused when the cutter applied them (after lateness buffering) go to the sink too;
        ``restored``: they came from partitions being restored (see :meth:`DeadLetterSink.write`)."""
        for event, reason in cutter.drain_rejected():
            dead.write(event.to_json(), reason, f"event {event.id or '?'} at t={event.time:g}", restored=restored)

    # -- observability --------------------------------------------------------------------------------------------

    def _report_lag(self) -> None:
        lag_of = getattr(self.source, "lag", None)
        if lag_of is None or time.monotonic() - self.last_lag_report < LAG_REPORT_EVERY_S:
            return
        self.last_lag_report = time.monotonic()
        self.summary.lag = lag_of()
        log.info("consumer lag", extra={"fields": {f"partition:{p}": n for p, n in sorted(self.summary.lag.items())}})

    def _write_metrics(self) -> None:
        """``STATE/metrics.json``, rewritten at every checkpoint, for dashboards and health checks."""
        lag_of = getattr(self.source, "lag", None)
        if lag_of is not None:
            self.summary.lag = lag_of()
        s = self.summary
        live = self.source.live_partitions()
        metrics = {
            "at": time.time(), "source": self.source_url, "records": s.records, "accepted": s.accepted, "restored": s.restored,
            "dead_letters": self.dead.count, "snapshots": s.snapshots, "published": s.published,
            "versions": s.versions, "aligned_through": self.aligned_through, "to_align": len(self.backlog),
            "lag": {str(p): n for p, n in sorted(s.lag.items())},
            "assigned": sorted(getattr(self.source, "assigned", set())), "live": None if live is None else sorted(live),
            "kafka_reachable": getattr(self.source, "reachable", None),
            "redis_pending": self.publisher.pending is not None,
            "quality": self.metrics.quality,  # prequential, per pair, as of the last alignment
            "redis_down_s": (None if self.publisher.down_since is None
                             else round(time.monotonic() - self.publisher.down_since, 1)),
        }
        path = self.state_dir / "metrics.json"
        temp = path.with_name(".metrics.json.tmp")
        temp.write_text(json.dumps(metrics, indent=1))
        os.replace(temp, path)


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit="ev", desc="events", file=sys.stderr, smoothing=0.1)
