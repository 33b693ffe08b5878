"""kafka-python's polled messages as :class:`Record` s: the ingest hot path of a Kafka source.

It runs once per message, so it stays one loop over local names. A message value may hold several events, one
per line (``dynalign feed --batch``); its records share the message's position and their origins end in
``#line``. Reading advances this state's offsets (:class:`stream.kafka_offsets.ReadOffsets`).
"""

from __future__ import annotations

from typing import Any

from stream.kafka_offsets import ReadOffsets
from stream.records import Record, new_record


def records_from(batches: dict[Any, list[Any]], offsets: ReadOffsets) -> list[Record]:
    """``batches`` (``KafkaConsumer.poll``'s answer) as records, in partition then offset order."""
    out: list[Record] = []
    add = out.append
    topic, next_offsets = offsets.topic, offsets.next
    for tp in sorted(batches, key=lambda tp: tp.partition):
        partition = tp.partition
        key = str(partition)
        restore_until = offsets.restore_until.get(partition, 0)
        for message in batches[tp]:
            offset = message.offset
            next_offsets[key] = offset + 1
            position = {"topic": topic, "offsets": dict(next_offsets)}
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
