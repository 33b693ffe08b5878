"""Records from a Kafka topic consumed in a group, where this worker's checkpoint, not the group, is the truth of
what its state holds (see :class:`KafkaSource`)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from stream.kafka_settings import DEFAULT_GROUP, KafkaSettings, parse_kafka_url, unreachable, wait_for_brokers
from stream.records import Record, SourceUnavailable, collector_paused, new_record

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

    While the group's committed offset of a newly assigned partition is unknown, the partition stays paused:
    kafka-python runs rebalance callbacks on its IO thread, where blocking calls are not allowed, so the
    lookup happens in the next :meth:`poll`. On revoke, ``on_revoke()`` (called on that IO thread while the
    caller's ``poll`` waits) must make the state durable and return its position; those offsets are committed
    before the partitions are handed over, so the next owner starts exactly there.

    A message value may hold several events, one per line (``dynalign feed --batch``); its records share the
    message's position and their origins end in ``#line``.
    """

    PROBE_EVERY_S = 2.0  # how often an idle consumer checks that a broker still answers, to log outages clearly
    OUTAGE_REMINDER_S = 60.0

    def __init__(self, url: str, settings: KafkaSettings | None = None, *, position: dict | None = None,
                 on_revoke: Callable[[], dict | None] | None = None):
        from kafka import KafkaConsumer

        self.url = url
        self.settings = settings = settings or KafkaSettings()
        self.servers, self.topic, url_group = parse_kafka_url(url)
        self.group = url_group or settings.group_id or DEFAULT_GROUP
        self.on_revoke = on_revoke
        self._offsets: dict[str, int] = {}  # partition (as in positions) -> next offset this worker's state needs
        self._restore_until: dict[int, int] = {}  # the group's committed offset when the partition was assigned
        self._committed: dict[int, int] = {}  # what this worker last committed, as confirmed
        self._last_commit: dict = {}  # the last offsets asked to be committed
        self._held: set[int] = set()  # assigned, paused until the group's committed offset is known
        self._paused = False  # the caller asked for no records
        self._outage_since: float | None = None
        self._next_probe = 0.0
        self._last_reminder = 0.0
        if position:
            if not isinstance(position.get("offsets"), dict):
                raise ValueError(f"{url}: {position!r} is not a Kafka position (topic, offsets)")
            if position.get("topic") == self.topic:
                self._offsets = {str(p): int(o) for p, o in position["offsets"].items()}
            else:
                log.warning("resume position is for topic %r, not %r; ignoring it", position.get("topic"), self.topic)

        started = time.monotonic()
        self._probe = "proxy_url" not in settings.extra  # a proxy hides the brokers from a direct probe
        if self._probe:
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
        self._consumer.subscribe([self.topic], listener=_rebalance_listener(self))
        log.info("consuming %s as group %r", url, self.group)

    # -- the rebalance listener's work (kafka-python's IO thread) ----------------------------------------------

    def _assigned(self, assigned: Any) -> None:
        for tp in assigned:
            own = self._offsets.get(str(tp.partition))
            if own is not None:
                self._consumer.seek(tp, own)
            else:
                self._consumer.seek_to_beginning(tp)
            self._held.add(tp.partition)
        if assigned:
            self._consumer.pause(*assigned)
        log.info("%s: assigned partitions %s", self.url, sorted(tp.partition for tp in assigned))

    async def _revoked(self, revoked: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        if not partitions:
            return
        position = self.on_revoke() if self.on_revoke else None
        offsets = self._offsets_to_commit(position, partitions)
        if offsets:
            try:
                await self._consumer.commit_async(offsets)
                self._committed.update({tp.partition: o.offset for tp, o in offsets.items()})
            except Exception as e:  # the next owner then re-reads a little more; nothing is lost
                log.warning("%s: commit before handing over partitions %s failed (%s: %s)", self.url,
                            sorted(partitions), type(e).__name__, e)
        self._held -= partitions
        log.info("%s: revoked partitions %s%s", self.url, sorted(partitions),
                 f" after committing {self._shown(offsets)}" if offsets else "")

    def _lost(self, lost: Any) -> None:
        partitions = {tp.partition for tp in lost}
        if not partitions:
            return
        if self.on_revoke:
            self.on_revoke()  # our state stays valid; only the commit is no longer ours to make
        self._held -= partitions
        log.warning("%s: lost partitions %s (this worker was dropped from the group, e.g. after a long stall); "
                    "their new owner continues from the group's last commit", self.url, sorted(partitions))

    # -- the caller's side ------------------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def assigned(self) -> set[int]:
        """Partitions of the topic this consumer currently owns (empty until the group is joined)."""
        return {tp.partition for tp in self._consumer.assignment()}

    def live_partitions(self) -> set[int]:
        """Owned partitions that this worker has caught up on (none of their records is ``restoring``)."""
        return {p for p in self.assigned
                if p not in self._held and self._offsets.get(str(p), 0) >= self._restore_until.get(p, 0)}

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
                out[tp.partition] = max(0, high - self._offsets.get(str(tp.partition), 0))
        return out

    def group_backlog(self) -> dict[int, int]:
        """Records the group has not committed yet in the topic's partitions this worker does not own: work left to
        other members, or to members killed without leaving, which keep their partitions until their session
        times out (``stream.kafka_session_timeout_ms``) and the group gives them to the living. Empty when the
        broker cannot say (an outage is reported by :meth:`poll`)."""
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        timeout_ms = int(self.settings.commit_timeout_s * 1000)
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
        return self._outage_since is None

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, decoded with the garbage collector paused (see :func:`collector_paused`;
        the pause includes the wait for records, at most ``timeout_s``, while this thread allocates nothing)."""
        self._release_held()
        with collector_paused():
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        self._release_held()
        if not batches:
            self._watch_connectivity()
            return []
        if self._outage_since is not None:
            self._report_recovery()
        with collector_paused():
            return self._records(batches)

    def _records(self, batches: dict) -> list[Record]:
        """kafka-python's messages as records, in partition then offset order; advances this state's offsets."""
        out: list[Record] = []
        add = out.append
        topic, offsets = self.topic, self._offsets
        for tp in sorted(batches, key=lambda tp: tp.partition):
            partition = tp.partition
            key = str(partition)
            restore_until = self._restore_until.get(partition, 0)
            for message in batches[tp]:
                offset = message.offset
                offsets[key] = offset + 1
                position = {"topic": topic, "offsets": dict(offsets)}
                origin = f"kafka:{topic}[{partition}]@{offset}"
                restoring = offset < restore_until
                value = message.value if message.value is not None else b""
                if b"\n" in value:
                    for line_no, line in enumerate(value.split(b"\n"), 1):
                        if line and not line.isspace():  # not blank (as line.strip(), without a copy per line)
                            add(new_record((line, position, f"{origin}#{line_no}", message.key, partition, restoring)))
                else:
                    add(new_record((value, position, origin, message.key, partition, restoring)))
        return out

    def pause(self) -> None:
        self._paused = True
        owned = self._consumer.assignment()
        if owned:
            self._consumer.pause(*owned)

    def resume(self) -> None:
        self._paused = False
        ready = [tp for tp in self._consumer.assignment() if tp.partition not in self._held]
        if ready:
            self._consumer.resume(*ready)

    def commit(self, position: dict) -> None:
        """Commit ``position``'s offsets for the partitions still owned (never behind the group's offset).

        Asynchronous, so that a broker outage does not stall the caller; commits go out in order, and a failure
        is logged, not raised (the checkpoint holds the position, and the next commit covers these offsets).
        :meth:`close` waits for the last one.
        """
        offsets = self._offsets_to_commit(position, self.assigned)
        if offsets:
            self._last_commit = offsets
            self._consumer.commit_async(offsets, callback=self._commit_done)

    def _commit_done(self, offsets: dict, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning("commit to %s failed (%s: %s); the next commit will cover it", self.url,
                        type(response).__name__, response)
        else:
            self._committed.update({tp.partition: o.offset for tp, o in offsets.items()})

    def close(self) -> None:
        """Leave the group, once the last commit is confirmed (or ``commit_timeout_s`` has passed)."""
        from kafka.errors import KafkaError

        self.on_revoke = None  # the caller has checkpointed and committed; closing must not do it again
        unconfirmed = {tp: o for tp, o in self._last_commit.items() if self._committed.get(tp.partition) != o.offset}
        if unconfirmed and self._consumer.assignment():
            try:
                self._consumer.commit(unconfirmed, timeout_ms=int(self.settings.commit_timeout_s * 1000))
            except KafkaError as e:
                log.warning("final commit to %s failed (%s: %s); the next owner re-reads a little more", self.url,
                            type(e).__name__, e)
        self._consumer.close(autocommit=False)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _offsets_to_commit(self, position: dict | None, partitions: set[int]) -> dict:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        out = {}
        for p, offset in ((position or {}).get("offsets") or {}).items():
            p, offset = int(p), int(offset)
            if (p in partitions and p not in self._held and offset >= self._restore_until.get(p, 0)
                    and offset != self._committed.get(p)):
                out[TopicPartition(self.topic, p)] = OffsetAndMetadata(offset, "", -1)
        return out

    def _release_held(self) -> None:
        """Learn where the group stands on newly assigned partitions, then let them be read."""
        if not self._held:
            return
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        owned = self.assigned
        self._held &= owned
        tps = [TopicPartition(self.topic, p) for p in sorted(self._held)]
        if not tps:
            return
        timeout_ms = int(self.settings.commit_timeout_s * 1000)
        try:
            committed = {tp: self._consumer.committed(tp, timeout_ms=timeout_ms) for tp in tps}
            fresh = [tp for tp in tps if str(tp.partition) not in self._offsets]
            beginnings = self._consumer.beginning_offsets(fresh, timeout_ms=timeout_ms) if fresh else {}
        except KafkaError as e:
            log.warning("%s: cannot learn the group's offsets of partitions %s yet (%s: %s); they stay paused",
                        self.url, [tp.partition for tp in tps], type(e).__name__, e)
            return
        for tp in tps:
            p, key = tp.partition, str(tp.partition)
            if key not in self._offsets:
                self._offsets[key] = beginnings[tp]
                if beginnings[tp] > 0:
                    log.warning("%s: partition %d begins at offset %d: retention deleted the events before it, "
                                "so this worker's graph lacks them", self.url, p, beginnings[tp])
            start, group_at = self._offsets[key], committed[tp] or 0
            self._restore_until[p] = group_at
            self._committed[p] = committed[tp]
            if start < group_at:
                log.info("%s: partition %d: rebuilding this worker's state from offset %d up to the group's offset %d "
                         "(%d events processed by earlier owners)", self.url, p, start, group_at, group_at - start)
            else:
                log.info("%s: partition %d: resuming at offset %d (group at %s)", self.url, p, start, committed[tp])
            self._held.discard(p)
            if not self._paused:
                self._consumer.resume(tp)

    def _watch_connectivity(self) -> None:
        """On an idle poll, check now and then that a broker answers, so an outage gets a clear log line.

        kafka-python itself reconnects with backoff (``reconnect_backoff_ms`` → ``reconnect_backoff_max_ms``) and
        resumes by itself; polls keep blocking for their timeout meanwhile, so nothing spins.
        """
        now = time.monotonic()
        if not self._probe or now < self._next_probe:
            return
        self._next_probe = now + self.PROBE_EVERY_S
        errors = unreachable(self.servers, 1.0)
        if not errors:
            if self._outage_since is not None:
                self._report_recovery()
            return
        if self._outage_since is None:
            self._outage_since = self._last_reminder = now
            log.warning("Kafka unreachable for %s (%s); retrying with backoff up to %.0f s; this worker keeps its "
                        "state and resumes where it stopped", self.url, "; ".join(errors),
                        self._consumer.config["reconnect_backoff_max_ms"] / 1000)
        elif now - self._last_reminder >= self.OUTAGE_REMINDER_S:
            self._last_reminder = now
            log.warning("Kafka still unreachable for %s after %.0f s (%s)", self.url, now - self._outage_since,
                        "; ".join(errors))

    def _report_recovery(self) -> None:
        log.info("Kafka reachable again for %s after %.0f s", self.url, time.monotonic() - self._outage_since)
        self._outage_since = None

    @staticmethod
    def _shown(offsets: dict) -> dict[int, int]:
        return {tp.partition: o.offset for tp, o in sorted(offsets.items())}


def _rebalance_listener(source: KafkaSource) -> Any:
    """kafka-python calls these on its IO thread; async so that the commit on revoke can be awaited there."""
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await source._revoked(revoked)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            source._assigned(assigned)

        async def on_partitions_lost(self, lost: Any) -> None:
            source._lost(lost)

    return Listener()
