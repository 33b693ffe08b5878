"""The service's way out to Redis: the newest update not yet published, published with backoff while Redis is
away, and only for the pairs this worker owns.

With Kafka a pair is published by the worker that owns, caught up, every partition that carried the events of
its two networks (``net_partitions``, filled by ingestion); the others keep it while they are joining or
catching up and drop it once another worker owns those partitions. A published version is also recorded in the
on-disk alignment history, so it can be read back after Redis retired it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import redis

from aligner.publish.redis_alignments import RedisPublisher
from aligner.tools.replay import record_update
from aligner.update import AlignmentUpdate, PairTopK
from snapshots.history import AlignmentHistory
from stream.records import PartitionedSource, Source

if TYPE_CHECKING:
    from aligner.service.metrics import ServiceMetrics
    from aligner.service.run_summary import RunSummary

log = logging.getLogger("dynalign.service")

PUBLISH_BACKOFF_S = (0.5, 10.0)  # retry delays while Redis is away: first, then doubling up to the last


class UpdatePublisher:
    """Holds at most one update (the newest wins: an older unpublished one is superseded) and publishes what of
    it this worker may; :attr:`pending` is what is left, recorded by every checkpoint."""

    def __init__(self, redis_publisher: RedisPublisher, history: AlignmentHistory, source: Source,
                 net_partitions: dict[str, set[int]], summary: RunSummary, metrics: ServiceMetrics,
                 pending: AlignmentUpdate | None = None):
        self.redis_publisher = redis_publisher
        self.history = history
        self.source = source
        self.net_partitions = net_partitions  # shared with ingestion, which fills it
        self.summary = summary
        self.metrics = metrics
        self.pending = pending
        self.down_since: float | None = None  # time.monotonic() of the first failure while Redis is away
        self.next_attempt = 0.0
        self.delay = PUBLISH_BACKOFF_S[0]
        self.warned_pairs: set[tuple[str, str]] = set()  # (pair, reason) already logged

    def offer(self, update: AlignmentUpdate, live: set[int] | None, model_version: str | None,
              skipped_why: str | None = None) -> None:
        """A new update aligned on a snapshot cut while ``live`` partitions were caught up (``None``: all):
        what of it this worker owns supersedes the pending one and is published now. ``skipped_why``: say why
        the rest is not published."""
        if live is not None and skipped_why:
            self.skipped([t for t in update.pairs if not self.within(t, live)], skipped_why)
        owned = self.owned_pairs(update, live)
        if owned is not None:
            self.pending = owned
            self.publish(model_version, now=True)

    def within(self, t: PairTopK, partitions: set[int]) -> bool:
        """Whether every event of both networks of ``t`` seen here came from ``partitions``."""
        return all(parts and parts <= partitions
                   for parts in (self.net_partitions.get(t.src), self.net_partitions.get(t.dst)))

    def owned_pairs(self, update: AlignmentUpdate, live: set[int] | None) -> AlignmentUpdate | None:
        """The part of ``update`` whose networks' events all came from ``live`` partitions (``None``: all)."""
        if live is None:
            return update
        pairs = [t for t in update.pairs if self.within(t, live)]
        return dataclasses.replace(update, pairs=pairs) if pairs else None

    def skipped(self, pairs: list[PairTopK], why: str) -> None:
        """Say once per pair and reason why this worker does not publish it."""
        for t in pairs:
            tag = "|".join(sorted((t.src, t.dst)))
            if (tag, why) not in self.warned_pairs:
                self.warned_pairs.add((tag, why))
                came_from = ", ".join(f"{net} from {sorted(self.net_partitions.get(net, ())) or 'none seen here'}"
                                      for net in sorted((t.src, t.dst)))
                log.info(f"not publishing {tag} from this worker: {why} (partitions: {came_from})")

    def publish(self, model_version: str | None, now: bool = False) -> bool:
        """Publish the pending update; while Redis is away, retry with backoff (the caller keeps ingesting).
        Returns whether :attr:`pending` changed (the next checkpoint must record it)."""
        if self.pending is None or (not now and time.monotonic() < self.next_attempt):
            return False
        ready, waiting = self._sort(self.pending.pairs)
        if not ready and len(waiting) == len(self.pending.pairs):
            return False  # nothing this worker may publish yet
        if ready:
            started = time.perf_counter()
            update = dataclasses.replace(self.pending, pairs=ready)
            try:
                versions = self.redis_publisher.publish(update)
            except redis.RedisError as e:
                self.summary.redis_error = f"{type(e).__name__}: {e}"
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.warning(f"Redis unavailable ({e}); keeping snapshot {update.snapshot_id}'s alignments (the "
                                "newest update wins) and publishing them when Redis answers; ingestion goes on")
                self.next_attempt = time.monotonic() + self.delay
                self.delay = min(self.delay * 2, PUBLISH_BACKOFF_S[1])
                return False
            if self.down_since is not None:
                log.info(f"Redis is back after {time.monotonic() - self.down_since:.0f} s; published snapshot "
                         f"{update.snapshot_id}")
                self.down_since = None
            self.delay = PUBLISH_BACKOFF_S[0]
            self.summary.redis_error = None
            record_update(self.history, update, versions, model_version)
            self.summary.published += 1
            self.summary.versions.update(versions)
            self.summary.last_version = max(self.summary.versions.values())
            self.summary.publish_s += time.perf_counter() - started
            self.metrics.published(update, time.perf_counter() - started)
        self.pending = dataclasses.replace(self.pending, pairs=waiting) if waiting else None
        return True

    def _sort(self, pairs: list[PairTopK]) -> tuple[list[PairTopK], list[PairTopK]]:
        """Pairs to publish now, and pairs to keep for later; the rest is dropped.

        With Kafka a pair is published once its partitions are live here (they may have moved since it was
        aligned); it waits while this worker is joining its group or catching up on them, and is dropped when
        another worker owns them: that one publishes it.
        """
        live = self.source.live_partitions()
        if live is None or not isinstance(self.source, PartitionedSource):
            return pairs, []  # a file or stdin: everything is live
        assigned = self.source.assigned
        ready, waiting, dropped = [], [], []
        for t in pairs:
            if self.within(t, live):
                ready.append(t)
            elif not assigned or self.within(t, assigned):
                waiting.append(t)
            else:
                dropped.append(t)
        self.skipped(dropped, "another worker owns its partitions now, or the pair spans workers (feed networks "
                              "aligned together with one key)")
        return ready, waiting
