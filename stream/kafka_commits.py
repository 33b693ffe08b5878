"""Offset commits of a Kafka source: what is due, what the group confirmed, and the last commit before leaving.

The group's committed offset marks what is *new work*: a worker commits only offsets of partitions it owns and
has caught up on, never behind the group's offset (an earlier owner processed up to there), and never the same
offset twice. Ordinary commits are asynchronous, so a broker outage does not stall the caller; the commit
before handing partitions over, and the one when closing, are waited for.
"""

from __future__ import annotations

import logging
from typing import Any

from stream.kafka_offsets import ReadOffsets

log = logging.getLogger("stream.kafka_source")  # the source's one logger (see stream.kafka_source)


class CommitLedger:
    """The commits of one consumer: those asked for, and those the group confirmed."""

    def __init__(self, consumer: Any, url: str, offsets: ReadOffsets, timeout_ms: int):
        self._consumer = consumer
        self._url = url
        self._offsets = offsets
        self._timeout_ms = timeout_ms
        self._committed: dict[int, int | None] = {}  # what this worker last committed, as confirmed
        self._last_commit: dict = {}  # the last offsets asked to be committed

    def learnt(self, partition: int, committed: int | None) -> None:
        """The group's committed offset of a newly assigned ``partition`` (None: it never committed one)."""
        self._committed[partition] = committed

    def due(self, position: dict | None, partitions: set[int]) -> dict:
        """The offsets of ``position`` worth committing for ``partitions`` (owned, with the group's offset known),
        as kafka-python wants them."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        out = {}
        for p, offset in ((position or {}).get("offsets") or {}).items():
            p, offset = int(p), int(offset)
            if (p in partitions and offset >= self._offsets.restore_until.get(p, 0)
                    and offset != self._committed.get(p)):
                out[TopicPartition(self._offsets.topic, p)] = OffsetAndMetadata(offset, "", -1)
        return out

    def commit(self, position: dict, partitions: set[int]) -> None:
        """Commit what is due, asynchronously; a failure is logged, not raised (the next commit covers it)."""
        offsets = self.due(position, partitions)
        if offsets:
            self._last_commit = offsets
            self._consumer.commit_async(offsets, callback=self._done)

    async def commit_and_wait(self, offsets: dict) -> None:
        """Commit ``offsets`` (from :meth:`due`) on kafka-python's IO thread, raising if the group refuses."""
        await self._consumer.commit_async(offsets)
        self._confirmed(offsets)

    def close(self) -> None:
        """Wait for the last commit to be confirmed, committing it again if need be (at most the timeout)."""
        from kafka.errors import KafkaError

        unconfirmed = {tp: o for tp, o in self._last_commit.items() if self._committed.get(tp.partition) != o.offset}
        if unconfirmed and self._consumer.assignment():
            try:
                self._consumer.commit(unconfirmed, timeout_ms=self._timeout_ms)
            except KafkaError as e:
                log.warning("final commit to %s failed (%s: %s); the next owner re-reads a little more", self._url,
                            type(e).__name__, e)

    def _done(self, offsets: dict, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning("commit to %s failed (%s: %s); the next commit will cover it", self._url,
                        type(response).__name__, response)
        else:
            self._confirmed(offsets)

    def _confirmed(self, offsets: dict) -> None:
        self._committed.update({tp.partition: o.offset for tp, o in offsets.items()})
