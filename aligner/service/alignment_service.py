"""The service loop: source → validation → snapshots → aligner → Redis, with checkpoints that lose nothing.

The main thread polls a batch, validates each record (bad ones go to the dead-letter sink with the reason),
logs accepted events and feeds the snapshot cutter (:mod:`aligner.service.ingest`); every snapshot it completes is
saved and queued for the aligner. The aligner runs in a worker thread (:mod:`aligner.service.alignment_worker`)
while the main thread keeps polling: a Kafka consumer thus stays in its group (``max_poll_interval_ms`` counts
time between polls, and slow poll loops are the classic cause of ``CommitFailedError`` and rebalance storms) and
handles rebalances while the model adapts. Ingestion goes on meanwhile, and snapshots queue; on a live source the
aligner takes all of them as one catch-up step, and the source pauses only when ``service.max_backlog`` wait.
When an alignment ends its update is published (:mod:`aligner.service.publishing`), the newest one winning while
Redis is away. Heavy steps run on a fork of the aligner in the background (:mod:`aligner.service.background_refresh`).
A checkpoint (:mod:`aligner.service.checkpointer`) can be written at any moment and only then is the source told
to commit, so every accepted event takes effect exactly once. SIGINT/SIGTERM finish the current batch and
alignment first.

With Kafka, a worker publishes a pair only while it owns, caught up, every partition that carried the two
networks' events (see :class:`stream.kafka_source.KafkaSource`): a pair is published by one worker at a time, and
never from a partial history.

This module is the façade: it opens the parts in order, runs the loop that calls them, and closes them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Collection

from aligner.config import Config, mask_url
from aligner.publish.embedded_redis import redis_server_binary
from aligner.publish.redis_alignments import RedisPublisher
from aligner.runtime import aligner_threads
from aligner.service.alignment_worker import AlignmentWorker, JobKind
from aligner.service.background_refresh import BackgroundRefresh
from aligner.service.checkpointer import Checkpointer
from aligner.service.connections import dead_letter_sink, kafka_settings, redis_for
from aligner.service.ingest import Ingest
from aligner.service.metrics import ServiceMetrics
from aligner.service.publishing import UpdatePublisher
from aligner.service.recovery import Recovered, recover
from aligner.service.run_settings import read_run_settings, resume_config, run_record, started, write_run_settings
from aligner.service.run_summary import RunSummary
from aligner.service.run_tracker import RunTracker
from aligner.service.savepoint import open_savepoint
from snapshots.snapshot import Snapshot
from stream.sources import check_source_url, open_source

log = logging.getLogger("dynalign.service")

ALIGN_POLL_S = 0.2  # while the aligner works: how often the paused source is polled (and the job checked)
# While the aligner or a refresh works and the source is not paused: the poll's timeout, so events are ingested
# and cut as they arrive (the next job starts with them) and a finished job is collected within this long.
BUSY_POLL_S = 0.02
# The GIL's switch interval while the service runs (Python's default: 5 ms). Incremental steps, ingestion and a
# background refresh share it; at 5 ms an incremental step's many short torch calls each waited up to that for
# the GIL whenever the refresh held it (freshness at 5 ms and 0.5 ms: docs/benchmarks.md, Freshness).
GIL_SWITCH_S = 0.0005


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
        self.source_paused = False  # service.max_backlog snapshots wait for the aligner
        self.summary = RunSummary()  # live counts; complete when run() returns
        self.metrics = ServiceMetrics(self)  # recorded always, served over HTTP when service.metrics_port is set
        self.opened = ExitStack()  # how to release what _open got to, undone in reverse when run() ends

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:
        if not self.stop_requested:
            log.info("stop requested: finishing the current batch and alignment, then checkpointing")
        self.stop_requested = True

    def run(self) -> RunSummary:
        started_at = time.perf_counter()
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be handled there
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig in previous:
                signal.signal(sig, self.request_stop)
        try:
            self._open()
            self._loop()
            worker, refresh = self.worker, self.refresh
            if not self.stop_requested and (self.source.exhausted or self.tracker.input_ended):
                self._queue(self.ingest.flush())
                while worker.backlog or worker.busy or refresh.busy:
                    if not worker.busy and worker.backlog:
                        worker.align_next()
                    if worker.busy:
                        self._collect(wait_s=ALIGN_POLL_S if refresh.busy else None)
                    else:
                        refresh.wait(None)
                    self._adopt_refreshed()
            elif worker.busy:
                self._collect(wait_s=None)
            self._publish_pending(now=True)
            self.checkpointer.checkpoint()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.opened.close()  # what _open got to, in reverse order (it may have failed half-way)
        self.ingest.complete_summary()
        self.summary.wall_s = time.perf_counter() - started_at
        if self.publisher.pending is None:
            self.summary.redis_error = None
        self.tracker.warn_about_the_run(self.cfg.service.pairs, self.ingest.cutter.graph.networks,
                                        self.ingest.resumed_from)
        return self.summary

    # -- start and stop ----------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Recover the state dir and connect everything, in this order: 1. settle the configuration (a
        savepoint's or the state dir's recorded settings), 2. the process and state-dir settings, 3. recover the
        store, cutter and aligner from the newest checkpoint, 4. connect Redis, the dead-letter sink and the
        source, 5. the worker threads and the parts that keep track of the run. Each release is registered with
        :attr:`opened` as soon as there is something to release."""
        seed, recorded = self._settle_config()
        self._prepare_process()
        recovered = recover(self.cfg, self.state_dir, self.source_url, seed, self.savepoint, recorded)
        self._connect(recovered)
        self._start_workers(recovered)

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
        """Torch's threads and the GIL's switch interval for this run (the latter restored on close:
        the process may go on without us), and an owner-only state dir."""
        import torch  # loaded when a run starts, not by commands that share this module

        torch.set_num_threads(aligner_threads(self.cfg.service.threads))
        self.opened.callback(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(GIL_SWITCH_S)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Owner-only: the event log, dead letters, alignments and the Redis dump hold the users' data, and
        # files in it are created with the default umask.
        try:
            os.chmod(self.state_dir, 0o700)
        except OSError as e:  # not ours (a shared mount): say so, run on
            log.warning(f"could not make the state dir {self.state_dir} owner-only ({e}): other local users may "
                        "read the events and alignments in it")

    def _connect(self, recovered: Recovered) -> None:
        """Redis (configured or embedded) and the publisher, the dead-letter sink and ingestion, the source at the
        checkpoint's position; then the run settings are recorded."""
        cfg = self.cfg
        client, redis_server = redis_for(cfg)
        url = redis_server.url if redis_server else cfg.publish.redis_url
        assert url is not None  # redis_for embeds a server exactly when none is configured
        self.summary.redis_url = url
        if redis_server:
            self.opened.callback(redis_server.stop)
            cli = Path(redis_server_binary()).with_name("redis-cli")
            log.info(f"embedded Redis at {mask_url(redis_server.url)} (connect: {cli} -p {redis_server.port} "
                     f"--askpass, password in {redis_server.directory / 'password'}); data in {redis_server.directory}")
        redis_publisher = RedisPublisher(client, cfg.publish.namespace, cfg.publish.retain_versions,
                                         worker=f"{socket.gethostname()}/{os.getpid()}/{self.state_dir.name}")
        dead, producer = dead_letter_sink(cfg, self.state_dir, self.source_url, recovered.deadletter_size)
        if producer is not None:
            self.opened.callback(producer.close)
        self.opened.callback(dead.close)
        self.ingest = Ingest(recovered.cutter, recovered.store, dead, recovered.net_partitions, recovered.position,
                             self.summary, self.metrics, cfg.snapshots.lateness_seconds, self.progress)
        self.opened.callback(self.ingest.close)
        self.source = open_source(self.source_url, position=recovered.position, kafka=kafka_settings(cfg),
                                  on_revoke=self._on_revoke)
        self.opened.callback(self.source.close)
        self.publisher = UpdatePublisher(redis_publisher, recovered.history, self.source, self.ingest.net_partitions,
                                         self.summary, self.metrics, recovered.pending)
        write_run_settings(self.state_dir, run_record(cfg, self.source_url))

    def _start_workers(self, recovered: Recovered) -> None:
        """The aligner and refresh threads, the run tracker and the checkpointer; the metrics server last."""
        cfg = self.cfg
        live = self.source_url == "-" or self.source_url.startswith("kafka://")
        self.worker = AlignmentWorker(recovered.aligner, recovered.saved, recovered.last_snapshot, recovered.backlog,
                                      recovered.store, self.summary, self.metrics, cfg.service, live,
                                      self._state_wanted)
        self.opened.callback(self.worker.close)
        self.refresh = BackgroundRefresh(self.summary, self.metrics)
        self.opened.callback(self.refresh.close)
        self.tracker = RunTracker(self.until_idle_s, self.source, self.source_url, self.state_dir, self.summary,
                                  self.metrics, self.ingest.dead, self.worker, self.publisher)
        self.checkpointer = Checkpointer(recovered.store, recovered.history, self.ingest, self.worker,
                                         self.publisher, self.source, self.tracker, self.summary,
                                         cfg.store.retain_snapshots)
        self.opened.callback(self.metrics.close)
        if cfg.service.metrics_port is not None:
            port = self.metrics.serve(cfg.service.metrics_host, cfg.service.metrics_port)
            log.info(f"metrics at http://{cfg.service.metrics_host}:{port}/metrics, health at /healthz")

    # -- the loop -------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        cfg = self.cfg.stream
        source, worker, refresh, tracker = self.source, self.worker, self.refresh, self.tracker
        while not self.stop_requested:
            timeout = cfg.poll_timeout_s
            if worker.busy:
                # A paused or exhausted source answers a poll at once: wait on the job instead of spinning.
                nothing_to_poll = self.source_paused or source.exhausted
                self._collect(wait_s=ALIGN_POLL_S if nothing_to_poll else 0.0)
            if worker.busy or refresh.busy:
                timeout = BUSY_POLL_S
            self._adopt_refreshed()
            if not worker.busy and worker.backlog:
                worker.align_next()
                timeout = 0.0
            elif not worker.busy and not refresh.busy and worker.learning_due():
                worker.learn_next()
            records = source.poll(cfg.batch_size, timeout)
            if records:
                self._queue(self.ingest.ingest(records))
                self.checkpointer.dirty = True
            self._queue(self.ingest.track_lanes(source))
            if records:
                self._throttle()
                tracker.records_came()
            elif source.exhausted and not worker.busy and not worker.backlog:
                if not refresh.busy:
                    break
                refresh.wait(ALIGN_POLL_S)  # all that is left; an exhausted source polls at once
            # Learning is background work; a refresh has alignments to publish.
            elif tracker.idle_for_good(work_left=bool(worker.backlog) or worker.aligning or refresh.busy):
                break
            self._publish_pending()
            if self.checkpointer.due():
                self.checkpointer.checkpoint()
            tracker.report_lag()

    def _queue(self, snapshots: list[Snapshot]) -> None:
        for snap in snapshots:
            self.worker.queue(snap, self.source.live_partitions())

    def _collect(self, wait_s: float | None) -> None:
        """If the job in flight has finished (waiting up to ``wait_s``), publish its alignments; a deferred heavy
        step starts a background refresh. Durable with the next periodic checkpoint: until then a restart aligns
        it again."""
        finished = self.worker.collect(wait_s)
        if finished is None:
            return
        self.checkpointer.dirty = True
        if finished.kind is JobKind.META_UPDATE:
            return
        last = finished.covered[-1]
        if self.refresh.busy:
            self.refresh.aligned_meanwhile(finished.covered)
        elif self.worker.aligner.deferred is not None:
            self.refresh.start(self.worker.aligner, last)
        if finished.update is not None:
            self.publisher.offer(finished.update, last.live_partitions, self.worker.model_version,
                                 skipped_why="its partitions were not caught up here when the snapshot was cut")
        self._throttle()

    def _adopt_refreshed(self) -> None:
        """A refreshed fork becomes the aligner once no alignment is in flight; caught up, its own alignments
        are published, else the step that catches it up publishes."""
        refreshed = self.refresh.adopt(aligner_idle=not self.worker.busy)
        if refreshed is None:
            return
        self.worker.adopt(refreshed)
        self.checkpointer.dirty = True
        if not refreshed.left:
            self.publisher.offer(refreshed.update, refreshed.point.live_partitions, self.worker.model_version)

    def _throttle(self) -> None:
        """Pause the source while ``service.max_backlog`` snapshots wait for the aligner; resume below it."""
        self.source_paused = len(self.worker.backlog) >= self.cfg.service.max_backlog
        if self.source_paused:
            self.source.pause()
        else:
            self.source.resume()

    def _publish_pending(self, now: bool = False) -> None:
        if self.publisher.publish(self.worker.model_version, now=now):
            self.checkpointer.dirty = True  # the checkpoint must record what is left to publish

    def _state_wanted(self, serialised_at: float) -> bool:
        """For the aligner thread: serialise the aligner's state now for the next checkpoint, near or final."""
        return self.stop_requested or self.checkpointer.state_wanted(serialised_at)

    def _on_revoke(self) -> dict | None:
        """Kafka's revocation callback (the source is opened before the checkpointer exists)."""
        return self.checkpointer.on_revoke()
