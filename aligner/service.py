"""The service loop: source → validation → snapshots → aligner → Redis, with checkpoints that lose nothing.

One batch at a time: poll records, validate each (bad ones go to the dead-letter sink with the reason), log
accepted events, feed the snapshot cutter; for every snapshot it completes, persist it, align, publish. A
checkpoint (graph and cutter state, aligner state, source position, event-log size) is written atomically after
any batch that completed a snapshot, every ``CHECKPOINT_EVERY_S`` seconds, and at exit; only then is the source
told to commit. After a crash the service resumes from the last checkpoint and re-reads the source from its
position, so every accepted event takes effect exactly once. SIGINT/SIGTERM finish the current batch first.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from aligner.config import Config
from aligner.embedded_redis import EmbeddedRedis, redis_server_binary
from aligner.engine import Aligner
from aligner.update import AlignmentUpdate
from aligner.redis_alignments import RedisPublisher
from snapshots.cutter import SnapshotCutter, SnapshotPolicy
from snapshots.store import SnapshotStore
from stream.deadletter import DeadLetterSink
from stream.events import InvalidEvent, parse_event
from stream.sources import KafkaSettings, open_source

log = logging.getLogger("dynalign.service")

CHECKPOINT_EVERY_S = 5.0


@dataclass
class RunSummary:
    records: int = 0
    accepted: int = 0
    dead_letters: int = 0
    snapshots: int = 0
    published: int = 0
    wall_s: float = 0.0
    align_s: float = 0.0
    ingest_s: float = 0.0
    redis_url: str = ""
    last_version: int | None = None
    cutter: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        """End to end: ingestion, snapshots, alignment and publishing."""
        return self.records / self.wall_s if self.wall_s else 0.0

    @property
    def ingest_events_per_s(self) -> float:
        """Validation, event logging and graph maintenance alone (``ingest_s``)."""
        return self.records / self.ingest_s if self.ingest_s else 0.0


def redis_for(cfg: Config) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """The configured Redis, or the embedded server under the state dir when none is configured."""
    if cfg.publish.redis_url:
        return redis.Redis.from_url(cfg.publish.redis_url), None
    server = EmbeddedRedis(Path(cfg.service.state_dir) / "redis").start()
    return redis.Redis.from_url(server.url), server


def kafka_settings(cfg: Config) -> KafkaSettings:
    s = cfg.stream
    return KafkaSettings(
        group_id=s.kafka_group, security_protocol=s.kafka_security_protocol, sasl_mechanism=s.kafka_sasl_mechanism,
        sasl_plain_username=s.kafka_sasl_username, sasl_plain_password=s.kafka_sasl_password,
        ssl_cafile=s.kafka_ssl_cafile, connect_timeout_s=s.kafka_connect_timeout_s,
    )


class AlignmentService:
    def __init__(self, cfg: Config, source_url: str, progress: bool = False):
        self.cfg = cfg
        self.source_url = source_url
        self.progress = progress
        self.state_dir = Path(cfg.service.state_dir)
        self.stop_requested = False
        self.pending: AlignmentUpdate | None = None  # the newest update Redis has not accepted yet

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stop_requested:
            log.info("stop requested: finishing the current batch, then checkpointing")
        self.stop_requested = True

    def run(self) -> RunSummary:
        cfg = self.cfg
        started = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        store = SnapshotStore(self.state_dir)
        checkpoint = store.recover()
        policy = SnapshotPolicy(window_seconds=cfg.snapshots.window_seconds, every_events=cfg.snapshots.every_events,
                                lateness_seconds=cfg.snapshots.lateness_seconds,
                                dedup_capacity=cfg.snapshots.dedup_capacity)
        aligner = Aligner(cfg.model, cfg.meta, cfg.adapt, cfg.service.pairs, cfg.publish.top_k, cfg.service.seed)
        position = None
        cutter = SnapshotCutter.from_state(checkpoint["cutter"], policy) if checkpoint else SnapshotCutter(policy)
        if checkpoint:
            if checkpoint.get("aligner"):
                aligner.load_state_bytes(checkpoint["aligner"])
            position = checkpoint.get("position")
            log.info("resuming from checkpoint", extra={"fields": {
                "snapshot": checkpoint.get("snapshot_id"), "position": position}})

        client, server = redis_for(cfg)
        summary = RunSummary(redis_url=server.url if server else cfg.publish.redis_url)
        if server:
            cli = Path(redis_server_binary()).with_name("redis-cli")
            log.info(f"embedded Redis at {server.url} (connect: {cli} -p {server.port}); data in {server.directory}")
        publisher = RedisPublisher(client, cfg.publish.namespace, cfg.publish.retain_versions)
        dead = DeadLetterSink(self.state_dir / "deadletter.jsonl")
        source = open_source(self.source_url, position=position, kafka=kafka_settings(cfg))
        previous = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self.request_stop)
        bar = _progress(self.progress)
        last_checkpoint = time.monotonic()
        last_snapshot = checkpoint.get("snapshot_id") if checkpoint else None
        try:
            while not self.stop_requested:
                records = source.poll(cfg.stream.batch_size, cfg.stream.poll_timeout_s)
                if not records:
                    if source.exhausted:
                        break
                    self._retry_pending(publisher, summary)
                    continue
                t_ingest = time.perf_counter()
                accepted_lines = []
                snapshots = []
                for rec in records:
                    try:
                        event = parse_event(rec.value)
                        completed = cutter.offer(event)
                    except InvalidEvent as e:
                        dead.write(rec.value, e.reason, rec.origin)
                        continue
                    accepted_lines.append(event.to_json())
                    snapshots += completed
                store.append_events(accepted_lines)
                self._rejected_to_dead_letters(cutter, dead)
                summary.ingest_s += time.perf_counter() - t_ingest
                summary.records += len(records)
                summary.accepted += len(accepted_lines)
                if bar:
                    bar.update(len(records))
                for snap in snapshots:
                    last_snapshot = self._process(snap, store, aligner, publisher, summary)
                if snapshots or time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                    self._checkpoint(store, dead, cutter, aligner, source, records[-1].position, last_snapshot)
                    last_checkpoint = time.monotonic()
                position = records[-1].position
            if not self.stop_requested and source.exhausted:
                snapshots = cutter.flush()
                self._rejected_to_dead_letters(cutter, dead)
                for snap in snapshots:
                    last_snapshot = self._process(snap, store, aligner, publisher, summary)
            self._retry_pending(publisher, summary)
            self._checkpoint(store, dead, cutter, aligner, source, position, last_snapshot)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar:
                bar.close()
            source.close()
            dead.close()
            if server:
                server.stop()
        summary.dead_letters = dead.count
        summary.wall_s = time.perf_counter() - started
        summary.cutter = dict(cutter.stats)
        return summary

    def _process(self, snap, store, aligner: Aligner, publisher: RedisPublisher, summary: RunSummary) -> int:
        store.save_snapshot(snap)
        summary.snapshots += 1
        t0 = time.perf_counter()
        update = aligner.on_snapshot(snap)
        summary.align_s += time.perf_counter() - t0
        fields = {"snapshot": snap.id, "events": snap.events,
                  **{f"nodes:{n}": int(s.alive.sum()) for n, s in snap.networks.items()}}
        if update is None:
            log.info("snapshot cut", extra={"fields": fields})
            return snap.id
        log.info("snapshot aligned", extra={"fields": {**fields, **update.stats}})
        self.pending = update
        self._retry_pending(publisher, summary)
        return snap.id

    def _retry_pending(self, publisher: RedisPublisher, summary: RunSummary) -> None:
        if self.pending is None:
            return
        try:
            summary.last_version = publisher.publish(self.pending)
            summary.published += 1
            self.pending = None
        except redis.RedisError as e:
            # Ingestion goes on; the newest update is kept and published once Redis answers again.
            log.warning(f"Redis unavailable, keeping snapshot {self.pending.snapshot_id} for later: {e}")

    @staticmethod
    def _rejected_to_dead_letters(cutter: SnapshotCutter, dead: DeadLetterSink) -> None:
        """Events the graph refused when the cutter applied them (after lateness buffering) go to the sink too."""
        for event, reason in cutter.drain_rejected():
            dead.write(event.to_json(), reason, f"event {event.id or '?'} at t={event.time:g}")

    def _checkpoint(self, store, dead, cutter, aligner, source, position, snapshot_id) -> None:
        store.sync()
        dead.flush(durable=True)
        store.write_checkpoint({
            "cutter": cutter.to_state(),
            "aligner": aligner.state_bytes(),
            "position": position,
            "events_log_size": store.events_log_size(),
            "snapshot_id": snapshot_id,
            "written_at": time.time(),
        })
        if position is not None:
            source.commit(position)


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit="ev", desc="events", file=sys.stderr, smoothing=0.1)
