"""Partitions coming to and leaving a Kafka source as the group rebalances, and the caller's pause on top.

A newly assigned partition is read from this state's own offset, or from its beginning if this state never saw
it, whatever the group committed; it stays paused (*held*) until the group's committed offset is known, which
decides which of its records are re-reads (``restoring``). kafka-python runs rebalance callbacks on its IO
thread, where blocking calls are not allowed, so that lookup waits for the next poll (:meth:`release_held`).
On revoke, ``on_revoke()`` (called on that IO thread while the caller's poll waits) must make the state
durable and return its position; those offsets are committed before the partitions are handed over, so the
next owner starts exactly there.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from stream.kafka_commits import CommitLedger
from stream.kafka_offsets import ReadOffsets

log = logging.getLogger("stream.kafka_source")  # the source's one logger (see stream.kafka_source)


class PartitionAssignment:
    """The partitions one consumer owns, those of them held back, and whether the caller paused reading."""

    def __init__(self, consumer: Any, url: str, offsets: ReadOffsets, commits: CommitLedger, timeout_ms: int,
                 on_revoke: Callable[[], dict | None] | None):
        self._consumer = consumer
        self._url = url
        self._offsets = offsets
        self._commits = commits
        self._timeout_ms = timeout_ms
        self.on_revoke = on_revoke
        self._held: set[int] = set()  # assigned, paused until the group's committed offset is known
        self._paused = False  # the caller asked for no records

    def owned(self) -> set[int]:
        """Partitions of the topic the consumer currently owns (empty until the group is joined)."""
        return {tp.partition for tp in self._consumer.assignment()}

    def settled(self) -> set[int]:
        """Owned partitions whose group offset is known: the only ones whose offsets may be committed."""
        return self.owned() - self._held

    def live(self) -> set[int]:
        """Owned partitions that this worker has caught up on (none of their records is ``restoring``)."""
        return {p for p in self.settled() if self._offsets.caught_up(p)}

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

    def listener(self) -> Any:
        """The rebalance listener to subscribe with: kafka-python calls it on its IO thread; async so that the
        commit on revoke can be awaited there."""
        from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

        assignment = self

        class Listener(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await assignment._revoked(revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                assignment._assigned(assigned)

            async def on_partitions_lost(self, lost: Any) -> None:
                assignment._lost(lost)

        return Listener()

    def release_held(self) -> None:
        """Learn where the group stands on newly assigned partitions, then let them be read."""
        if not self._held:
            return
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        self._held &= self.owned()
        tps = [TopicPartition(self._offsets.topic, p) for p in sorted(self._held)]
        if not tps:
            return
        try:
            committed = {tp: self._consumer.committed(tp, timeout_ms=self._timeout_ms) for tp in tps}
            fresh = [tp for tp in tps if self._offsets.get(tp.partition) is None]
            beginnings = self._consumer.beginning_offsets(fresh, timeout_ms=self._timeout_ms) if fresh else {}
        except KafkaError as e:
            log.warning("%s: cannot learn the group's offsets of partitions %s yet (%s: %s); they stay paused",
                        self._url, [tp.partition for tp in tps], type(e).__name__, e)
            return
        for tp in tps:
            p = tp.partition
            start = self._offsets.get(p)
            if start is None:
                start = self._offsets.next[str(p)] = beginnings[tp]
                if beginnings[tp] > 0:
                    log.warning("%s: partition %d begins at offset %d: retention deleted the events before it, "
                                "so this worker's graph lacks them", self._url, p, beginnings[tp])
            group_at = committed[tp] or 0
            self._offsets.restore_until[p] = group_at
            self._commits.learnt(p, committed[tp])
            if start < group_at:
                log.info("%s: partition %d: rebuilding this worker's state from offset %d up to the group's offset %d "
                         "(%d events processed by earlier owners)", self._url, p, start, group_at, group_at - start)
            else:
                log.info("%s: partition %d: resuming at offset %d (group at %s)", self._url, p, start, committed[tp])
            self._held.discard(p)
            if not self._paused:
                self._consumer.resume(tp)

    # -- the rebalance listener's work (kafka-python's IO thread) ----------------------------------------------

    def _assigned(self, assigned: Any) -> None:
        for tp in assigned:
            own = self._offsets.get(tp.partition)
            if own is not None:
                self._consumer.seek(tp, own)
            else:
                self._consumer.seek_to_beginning(tp)
            self._held.add(tp.partition)
        if assigned:
            self._consumer.pause(*assigned)
        log.info("%s: assigned partitions %s", self._url, sorted(tp.partition for tp in assigned))

    async def _revoked(self, revoked: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        if not partitions:
            return
        position = self.on_revoke() if self.on_revoke else None
        offsets = self._commits.due(position, partitions - self._held)
        if offsets:
            try:
                await self._commits.commit_and_wait(offsets)
            except Exception as e:  # the next owner then re-reads a little more; nothing is lost
                log.warning("%s: commit before handing over partitions %s failed (%s: %s)", self._url,
                            sorted(partitions), type(e).__name__, e)
        self._held -= partitions
        shown = {tp.partition: o.offset for tp, o in sorted(offsets.items())}
        log.info("%s: revoked partitions %s%s", self._url, sorted(partitions),
                 f" after committing {shown}" if offsets else "")

    def _lost(self, lost: Any) -> None:
        partitions = {tp.partition for tp in lost}
        if not partitions:
            return
        if self.on_revoke:
            self.on_revoke()  # our state stays valid; only the commit is no longer ours to make
        self._held -= partitions
        log.warning("%s: lost partitions %s (this worker was dropped from the group, e.g. after a long stall); "
                    "their new owner continues from the group's last commit", self._url, sorted(partitions))
