"""How far this worker's state has read each partition, and where the group stood when the partition came to it.

The two numbers a :class:`stream.kafka_source.KafkaSource` keeps per partition: reading advances the first (it
is the position the service checkpoints, ``{"topic": t, "offsets": {"<partition>": next offset}}``); a record
below the second was processed by an earlier owner and is re-read only to rebuild this state (``restoring``).

>>> offsets = ReadOffsets("kafka://h:1/t", "t", {"topic": "t", "offsets": {"0": 7}})
>>> offsets.restore_until[0] = 9
>>> offsets.get(0), offsets.caught_up(0), offsets.behind(0, high=12)
(7, False, 5)
"""

from __future__ import annotations

import logging

log = logging.getLogger("stream.kafka_source")  # the source's one logger (see stream.kafka_source)


class ReadOffsets:
    """This worker's read offsets per partition, resumed from a checkpointed ``position`` of the same topic.

    ``next`` and ``restore_until`` are plain dicts that reading (:func:`stream.kafka_records.records_from`, once
    per message) and assignment (:class:`stream.kafka_assignment.PartitionAssignment`) update in place.
    """

    def __init__(self, url: str, topic: str, position: dict | None):
        self.topic = topic
        self.next: dict[str, int] = {}  # partition (as in positions) -> next offset this worker's state needs
        self.restore_until: dict[int, int] = {}  # the group's committed offset when the partition was assigned
        if position:
            if not isinstance(position.get("offsets"), dict):
                raise ValueError(f"{url}: {position!r} is not a Kafka position (topic, offsets)")
            if position.get("topic") == topic:
                self.next = {str(p): int(o) for p, o in position["offsets"].items()}
            else:
                log.warning("resume position is for topic %r, not %r; ignoring it", position.get("topic"), topic)

    def get(self, partition: int) -> int | None:
        """The next offset this state needs of ``partition``; None if it never read it."""
        return self.next.get(str(partition))

    def caught_up(self, partition: int) -> bool:
        """Whether this state has read past everything earlier owners processed of ``partition``."""
        return self.next.get(str(partition), 0) >= self.restore_until.get(partition, 0)

    def behind(self, partition: int, high: int) -> int:
        """Records of ``partition`` between this state and the end ``high``."""
        return max(0, high - self.next.get(str(partition), 0))
