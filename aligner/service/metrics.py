"""Prometheus metrics and a health endpoint for a running service, so operators can watch and probe a worker.

``dynalign run`` with ``service.metrics_port`` set serves, on ``service.metrics_host`` (loopback by default):

- ``/metrics``: the Prometheus text format. Counts the service keeps anyway (:class:`aligner.service.run_summary.RunSummary`,
  the dead-letter sink, the backlog, the lag) are read when scraped, not counted a second time; step and publish
  durations, event → Redis freshness and online quality are recorded where they arise.
- ``/healthz``: JSON ``{"status": "ok" | "degraded", "reasons": [...], ...}`` (HTTP 200 or 503): Redis answers a
  PING, Kafka is reachable (Kafka sources), and no snapshot has waited for the aligner longer than
  ``STALE_ALIGNMENT_S``.

The metrics live in a registry of their own, not prometheus_client's global one: several services in one process
(tests, benchmarks) then never clash over metric names.

*Freshness* of an event: seconds from its arrival at the worker (the poll that returned it) to the publication of
the first version whose snapshot covers it. A snapshot covers the events offered to the cutter before it was cut
(``Snapshot.arrived``); the worker remembers, per polled batch, its arrival time and how many events had been
offered after it, so each publication observes whole batches at once (no per-event work on the hot path).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from enum import StrEnum
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import redis
from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from aligner.service.alignment_service import AlignmentService
    from aligner.service.jobs import Queued
    from aligner.update import AlignmentUpdate
    from snapshots.snapshot import Snapshot

log = logging.getLogger("dynalign.metrics")

# A snapshot waiting this long for the aligner makes the worker degraded: the model has fallen behind the stream
# (an adaptation on a large graph takes a minute or two; ten is no longer catching up).
STALE_ALIGNMENT_S = 600.0
REDIS_PING_TIMEOUT_S = 2.0
# Seconds; from an incremental step on a small graph (tens of ms) to an adaptation on a large one (minutes).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Event → Redis: at least the snapshot window's wait for most events, so the range reaches hours.
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"


class Step(StrEnum):
    """What the aligner thread (or the background refresh) spent a job on; the ``step`` label."""

    INCREMENTAL = "incremental"
    ADAPTATION = "adaptation"
    META_UPDATE = "meta_update"
    REFRESH = "refresh"  # a heavy step, or a catch-up, done on a fork in the background (service.refresh)
    NOTHING_TO_ALIGN = "nothing_to_align"  # a snapshot with no anchors between aligned networks yet


class WeightedHistogram(Collector):
    """A histogram that takes many equal observations at once (``observe(value, count)``): a publication covers
    thousands of events, and one ``Histogram.observe`` each would put a lock per event on the service's path."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]):
        self.name, self.documentation = name, documentation
        self.bounds = np.array(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last one is +Inf
        self.total = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        with self.lock:
            self.counts[int(np.searchsorted(self.bounds, value, side="left"))] += count
            self.total += value * count

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self.lock:
            cumulative = np.cumsum(self.counts).tolist()
            total = self.total
        buckets = [(floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative)] + [("+Inf", cumulative[-1])]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class Freshness:
    """Event → Redis freshness, observed into a :class:`WeightedHistogram` (see the module docstring)."""

    def __init__(self, histogram: WeightedHistogram):
        self.histogram = histogram
        self.batches: deque[tuple[int, float]] = deque()  # (events offered after the batch, its arrival)
        self.covered: int | None = None  # events offered before this count are published (None: none seen yet)
        self.cuts: dict[int, int] = {}  # snapshot id -> Snapshot.arrived, until published

    def arrived(self, offered_after: int, offered_before: int, at: float) -> None:
        """A polled batch took the cutter's offered count from ``offered_before`` to ``offered_after`` at ``at``
        (``time.perf_counter()``)."""
        if self.covered is None:
            self.covered = offered_before
        if offered_after > offered_before:
            self.batches.append((offered_after, at))

    def cut(self, snapshot: Snapshot) -> None:
        self.cuts[snapshot.id] = snapshot.arrived

    def published(self, snapshot_id: int, at: float) -> int:
        """Snapshot ``snapshot_id`` is visible in Redis since ``at``: observe every event it newly covers; returns
        how many (0 for a snapshot published before, or one cut before this process saw any event)."""
        arrived = self.cuts.get(snapshot_id)
        for done in [s for s in self.cuts if s <= snapshot_id]:
            del self.cuts[done]
        if arrived is None or self.covered is None or arrived <= self.covered:
            return 0
        observed = 0
        while self.batches and self.covered < arrived:
            offered_after, when = self.batches[0]
            n = min(offered_after, arrived) - self.covered
            if n > 0:
                self.histogram.observe(max(0.0, at - when), n)
                observed += n
            self.covered = min(offered_after, arrived)
            if offered_after <= arrived:
                self.batches.popleft()
        self.covered = max(self.covered, arrived)
        return observed


class ServiceMetrics:
    """The service's metrics: created with the service (recording costs next to nothing), served over HTTP only
    when ``service.metrics_port`` is set (:meth:`serve`)."""

    def __init__(self, service: AlignmentService):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ServiceCollector(service))
        self.steps = Histogram("dynalign_step_seconds", "Aligner jobs by kind of step: incremental, adaptation, "
                               "meta-update, background refresh.", ["step"], buckets=STEP_BUCKETS,
                               registry=self.registry)
        self.queued = Histogram("dynalign_snapshot_queued_seconds", "From a snapshot's cut to its alignment "
                                "starting.", buckets=STEP_BUCKETS, registry=self.registry)
        self.snapshot_save = Histogram("dynalign_snapshot_save_seconds", "Writing a cut snapshot to the state dir.",
                                       buckets=STEP_BUCKETS, registry=self.registry)
        self.publish = Histogram("dynalign_publish_seconds", "Publishing one update to Redis and the history.",
                                 buckets=STEP_BUCKETS, registry=self.registry)
        self.freshness_histogram = WeightedHistogram(
            "dynalign_event_freshness_seconds", "From an event's arrival at the worker to the publication of the "
            "first version covering it.", FRESHNESS_BUCKETS)
        self.registry.register(self.freshness_histogram)
        self.freshness = Freshness(self.freshness_histogram)
        quality = ("pair",)
        self.hits_at_1 = Gauge("dynalign_prequential_hits_at_1", "Running Hits@1 of newly revealed anchors under "
                               "the alignments published before them.", quality, registry=self.registry)
        self.mrr = Gauge("dynalign_prequential_mrr", "Running MRR of newly revealed anchors (prequential).",
                         quality, registry=self.registry)
        self.scored = Gauge("dynalign_prequential_anchors", "Anchors scored prequentially so far.", quality,
                            registry=self.registry)
        self.cycles = Gauge("dynalign_cycle_consistency", "Share of nodes whose top-1 in the pair agrees with the "
                            "top-1 composed through another aligned network (three or more networks).", quality,
                            registry=self.registry)
        self.quality: dict[str, dict[str, float]] = {}  # per pair "A|B", as the last alignment reported it
        self.last_aligned: float | None = None  # time.monotonic() of the last alignment finished
        self.redis_probe: redis.Redis | None = None  # made on the first health check
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None

    # -- recording (main thread) ----------------------------------------------------------------------------

    def batch(self, offered_after: int, offered_before: int, arrived_at: float) -> None:
        self.freshness.arrived(offered_after, offered_before, arrived_at)

    def snapshot_cut(self, snapshot: Snapshot, save_s: float) -> None:
        self.freshness.cut(snapshot)
        self.snapshot_save.observe(save_s)

    def step(self, seconds: float, update: AlignmentUpdate | None, kind: Step | None = None,
             queued_s: float | None = None) -> None:
        """One aligner job done: ``kind`` of step, by default the path the alignment ``update`` took."""
        stats = update.stats if update is not None else {}
        if kind is None:
            kind = Step(stats["path"]) if update is not None else Step.NOTHING_TO_ALIGN
        self.steps.labels(kind).observe(seconds)
        if queued_s is not None:
            self.queued.observe(queued_s)
        if update is not None:
            self.last_aligned = time.monotonic()
            for pair, q in stats.get("prequential_pairs", {}).items():
                self.quality[pair] = q
                self.hits_at_1.labels(pair).set(q["hits@1"])
                self.mrr.labels(pair).set(q["mrr"])
                self.scored.labels(pair).set(q["anchors"])
            for pair, rate in stats.get("cycle_consistency", {}).items():
                self.cycles.labels(pair).set(rate)

    def published(self, update: AlignmentUpdate, seconds: float) -> None:
        self.publish.observe(seconds)
        self.freshness.published(update.snapshot_id, time.perf_counter())

    # -- serving ----------------------------------------------------------------------------------------------

    def health(self) -> tuple[Health, dict[str, Any]]:
        """The worker's health and why (called from the HTTP thread: it reads, never drives, the service)."""
        s = self.service
        reasons = []
        if self.redis_probe is None and hasattr(s, "publisher"):
            self.redis_probe = _probe(s.publisher.redis_publisher.r)
        redis_error = _ping(self.redis_probe) if self.redis_probe is not None else "not connected yet"
        if redis_error:
            reasons.append(f"Redis unreachable: {redis_error}")
        kafka = getattr(getattr(s, "source", None), "reachable", None)
        if kafka is False:
            reasons.append("Kafka unreachable")
        waiting = _oldest_wait(s)
        if waiting is not None and waiting > STALE_ALIGNMENT_S:
            reasons.append(f"a snapshot has waited {waiting:.0f} s for the aligner (over {STALE_ALIGNMENT_S:g} s)")
        status = Health.DEGRADED if reasons else Health.OK
        return status, {
            "status": str(status), "reasons": reasons, "redis_reachable": not redis_error, "kafka_reachable": kafka,
            "last_alignment_age_s": (None if self.last_aligned is None
                                     else round(time.monotonic() - self.last_aligned, 1)),
            "oldest_waiting_snapshot_s": None if waiting is None else round(waiting, 1),
            "snapshots_waiting": len(_backlog(s)),
        }

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` and ``/healthz`` on ``host:port`` (0: any free port) in a daemon thread; returns
        the port."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                status, body = self.health()
                code = "200 OK" if status is Health.OK else "503 Service Unavailable"
                start_response(code, [("Content-Type", "application/json")])
                return [json.dumps(body).encode()]
            if environ.get("PATH_INFO") == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"dynalign serves /metrics and /healthz\n"]

        self.server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        return self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.redis_probe is not None:
            self.redis_probe.close()


class _ServiceCollector(Collector):
    """The counts the service keeps anyway, read at scrape time (plain attributes: safe from another thread)."""

    def __init__(self, service: AlignmentService):
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.service
        summary = s.summary
        dead = getattr(getattr(s, "ingest", None), "dead", None)
        publisher = getattr(s, "publisher", None)
        for name, doc, value in (
                ("records", "Records read, restored ones included.", summary.records),
                ("events_accepted", "Events accepted as new work.", summary.accepted),
                ("events_restored", "Events re-applied to rebuild partitions other workers processed.",
                 summary.restored),
                ("dead_letters", "Records rejected to the dead-letter sink.", dead.count if dead else 0),
                ("snapshots", "Snapshots cut.", summary.snapshots),
                ("publications", "Updates published to Redis.", summary.published)):
            yield CounterMetricFamily(f"dynalign_{name}", doc, value=value)
        seconds = CounterMetricFamily("dynalign_busy_seconds", "Time spent per stage (the run summary's *_s).",
                                      labels=["stage"])
        for stage in ("ingest", "align", "learn", "refresh", "state", "publish", "checkpoint"):
            seconds.add_metric([stage], getattr(summary, f"{stage}_s"))
        yield seconds
        versions = GaugeMetricFamily("dynalign_published_version", "Newest version published per pair.",
                                     labels=["pair"])
        for pair, version in dict(summary.versions).items():
            versions.add_metric([pair], version)
        yield versions
        lag = GaugeMetricFamily("dynalign_kafka_lag_records", "Records behind the end per owned partition, as of "
                                "the last checkpoint or lag report.", labels=["partition"])
        for partition, n in dict(summary.lag).items():
            lag.add_metric([str(partition)], n)
        yield lag
        yield GaugeMetricFamily("dynalign_snapshots_waiting", "Snapshots cut and waiting for the aligner.",
                                value=len(_backlog(s)))
        yield GaugeMetricFamily("dynalign_redis_pending", "1 while an update waits for Redis to take it.",
                                value=int(getattr(publisher, "pending", None) is not None))
        down_since = getattr(publisher, "down_since", None)
        yield GaugeMetricFamily("dynalign_redis_up", "0 while publishing to Redis fails.",
                                value=int(down_since is None))
        kafka = getattr(getattr(s, "source", None), "reachable", None)
        if kafka is not None:  # not a Kafka source: no such thing to report
            yield GaugeMetricFamily("dynalign_kafka_up", "0 while the Kafka brokers are unreachable.",
                                    value=int(kafka))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # every scrape on stderr would drown the service log
        pass


def _probe(client: redis.Redis) -> redis.Redis:
    """A client to the service's Redis (same address, credentials, TLS) with short timeouts: a health check must
    answer before the prober gives up, where the service's own client waits up to 10 s for a reply."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": REDIS_PING_TIMEOUT_S,
              "socket_connect_timeout": REDIS_PING_TIMEOUT_S}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _ping(client: redis.Redis) -> str | None:
    """``None`` if Redis answers a PING, else why not."""
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as e:
        return str(e) or type(e).__name__


def _backlog(service: AlignmentService) -> Sequence[Queued]:
    """The snapshots waiting for the aligner (none before the service opened its worker)."""
    worker = getattr(service, "worker", None)
    return () if worker is None else worker.backlog


def _oldest_wait(service: AlignmentService) -> float | None:
    """Seconds the oldest snapshot waiting for the aligner has waited, or None when none waits."""
    try:
        return time.monotonic() - _backlog(service)[0].cut_at
    except IndexError:  # none waits, or emptied by the main thread meanwhile
        return None


