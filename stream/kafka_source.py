"""Records from a Kafka topic consumed in a group, where this worker's checkpoint, not the group, is the truth of
what its state holds (see :class:`KafkaSource`)."""

from __future__ import annotations

import logging
import time
from typing import Callable

from stream.kafka_assignment import PartitionAssignment
from stream.kafka_commits import CommitLedger
from stream.kafka_offsets import ReadOffsets
from stream.kafka_outage import OutageWatch
from stream.kafka_records import records_from
from stream.kafka_settings import DEFAULT_GROUP, KafkaSettings, parse_kafka_url, wait_for_brokers
from stream.records import Record, SourceUnavailable, collector_paused

# Every collaborator logs here too: the logger's name is in every JSON log line, and what operators filter on.
log = logging.getLogger(__name__)


class KafkaSource:
    """Records from one Kafka topic, consumed in a group, offsets committed only on :meth:`commit`.

    Position ``{"topic": t, "offsets": {"<partition>": next offset}}``: how far *this worker's state* has read
    every partition it ever owned. The topic is the changelog of the graph (events are its deltas), so when a
    partition is assigned it is read from there, or from its beginning if this state never saw it, whatever
    the group committed. Records below the offset the group had committed at assignment were processed by an
    earlier owner: they come out with ``restoring=True`` (this worker re-reads them to rebuild those networks'
    history, as Kafka Streams restores a store from its changelog) and the partition is not *live* until it
    has caught up; commits never move the group's offset backwards. So every event is new work for exactly
    one worker, and every worker's graph holds each event of its partitions exactly once.

    While the group's committed offset of a newly assigned partition is unknown, the partition stays paused,
    and on revoke ``on_revoke()`` must make the state durable and return its position, committed before the
    partitions are handed over (:mod:`stream.kafka_assignment`). A message value may hold several events, one
    per line (:mod:`stream.kafka_records`).

    A façade over its collaborators, each in its own module: :class:`ReadOffsets` (this state's offsets),
    :class:`CommitLedger` (commits), :class:`PartitionAssignment` (rebalances, held and paused partitions) and
    :class:`OutageWatch` (outages told clearly).
    """

    def __init__(self, url: str, settings: KafkaSettings | None = None, *, position: dict | None = None,
                 on_revoke: Callable[[], dict | None] | None = None):
        from kafka import KafkaConsumer

        self.url = url
        self.settings = settings = settings or KafkaSettings()
        self.servers, self.topic, url_group = parse_kafka_url(url)
        self.group = url_group or settings.group_id or DEFAULT_GROUP
        self._offsets = ReadOffsets(url, self.topic, position)

        started = time.monotonic()
        probe = "proxy_url" not in settings.extra  # a proxy hides the brokers from a direct probe
        if probe:
            wait_for_brokers(self.servers, settings.connect_timeout_s, url)
        config = settings.consumer_config()
        # kafka-python retries with its own backoff; bound it like ours so a lost broker is retried often enough.
        config.setdefault("reconnect_backoff_ms", 500)
        config.setdefault("reconnect_backoff_max_ms", 10_000)
        config["bootstrap_timeout_ms"] = int(max(1.0, settings.connect_timeout_s - (time.monotonic() - started)) * 1000)
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.servers, group_id=self.group, enable_auto_commit=False, **config
            )
        except Exception as e:  # kafka-python raises several unrelated types for "cannot talk to the cluster"
            raise SourceUnavailable(f"cannot consume from {url}: {type(e).__name__}: {e}") from e
        self._timeout_ms = int(settings.commit_timeout_s * 1000)
        self._outage = OutageWatch(url, self.servers, config["reconnect_backoff_max_ms"] / 1000, probe)
        self._commits = CommitLedger(self._consumer, url, self._offsets, self._timeout_ms)
        self._assignment = PartitionAssignment(self._consumer, url, self._offsets, self._commits, self._timeout_ms,
                                               on_revoke)
        self._consumer.subscribe([self.topic], listener=self._assignment.listener())
        log.info("consuming %s as group %r", url, self.group)

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def assigned(self) -> set[int]:
        """Partitions of the topic this consumer currently owns (empty until the group is joined)."""
        return self._assignment.owned()

    def live_partitions(self) -> set[int]:
        """Owned partitions that this worker has caught up on (none of their records is ``restoring``)."""
        return self._assignment.live()

    def lag(self) -> dict[int, int]:
        """Records behind the end, per owned partition whose end is known (learnt from fetch responses)."""
        from kafka.errors import IllegalStateError

        out = {}
        for tp in self._consumer.assignment():
            try:
                high = self._consumer.highwater(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            if high is not None:
                out[tp.partition] = self._offsets.behind(tp.partition, high)
        return out

    def group_backlog(self) -> dict[int, int]:
        """Records the group has not committed yet in the topic's partitions this worker does not own: work left to
        other members, or to members killed without leaving, which keep their partitions until their session
        times out (``stream.kafka_session_timeout_ms``) and the group gives them to the living. Empty when the
        broker cannot say (an outage is reported by :meth:`poll`)."""
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        timeout_ms = self._timeout_ms
        try:
            partitions = self._consumer.partitions_for_topic(self.topic) or set()
            others = [TopicPartition(self.topic, p) for p in sorted(partitions - self.assigned)]
            if not others:
                return {}
            ends = self._consumer.end_offsets(others, timeout_ms=timeout_ms)
            begins = self._consumer.beginning_offsets(others, timeout_ms=timeout_ms)
            done = {tp: self._consumer.committed(tp, timeout_ms=timeout_ms) for tp in others}
        except KafkaError as e:
            log.debug("%s: cannot learn the group's backlog (%s: %s)", self.url, type(e).__name__, e)
            return {}
        backlog = {tp.partition: ends[tp] - max(done[tp] or 0, begins[tp]) for tp in others}
        return {p: n for p, n in backlog.items() if n > 0}

    @property
    def reachable(self) -> bool:
        """False while an outage is being reported (see :meth:`poll`)."""
        return self._outage.reachable

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, decoded with the garbage collector paused (see :func:`collector_paused`;
        the pause includes the wait for records, at most ``timeout_s``, while this thread allocates nothing).
        An idle poll checks now and then that a broker answers, so an outage gets a clear log line."""
        self._assignment.release_held()
        with collector_paused():
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        self._assignment.release_held()
        if not batches:
            self._outage.idle()
            return []
        self._outage.answered()
        with collector_paused():
            return records_from(batches, self._offsets)

    def pause(self) -> None:
        self._assignment.pause()

    def resume(self) -> None:
        self._assignment.resume()

    def commit(self, position: dict) -> None:
        """Commit ``position``'s offsets for the partitions still owned (never behind the group's offset).

        Asynchronous, so that a broker outage does not stall the caller; commits go out in order, and a failure
        is logged, not raised (the checkpoint holds the position, and the next commit covers these offsets).
        :meth:`close` waits for the last one.
        """
        self._commits.commit(position, self._assignment.settled())

    def close(self) -> None:
        """Leave the group, once the last commit is confirmed (or ``commit_timeout_s`` has passed)."""
        self._assignment.on_revoke = None  # the caller has checkpointed and committed; closing must not do it again
        self._commits.close()
        self._consumer.close(autocommit=False)
