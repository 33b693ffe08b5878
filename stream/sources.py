"""Where raw event payloads come from: JSON-lines files, stdin, or a Kafka topic, behind one small interface.

A :class:`Source` hands out raw bytes with a *position* after each record; the service stores the position
with its checkpoint and passes it back to :func:`open_source` to resume exactly after the last record it
applied. Sources never decode or validate: that is :func:`stream.events.parse_event`'s job, so that every
rejection, whatever its origin, goes through the same door to the dead-letter sink.

A Kafka topic is consumed in a group, but the service's checkpoint, not the group, is the truth of what this
worker's state holds; :class:`KafkaSource` explains how partitions move between workers.

>>> import io
>>> from stream.file_source import FileSource
>>> src = FileSource(io.BytesIO(b'{"a": 1}\\n\\n{"b": 2}'), name="demo")
>>> [(r.value, r.origin, r.position) for r in src.poll(10, 0.0)]
[(b'{"a": 1}', 'demo:1', {'offset': 9, 'line': 1}), (b'{"b": 2}', 'demo:3', {'offset': 18, 'line': 3})]
>>> src.exhausted
True
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Callable

from stream.file_source import FileSource, open_events_file
from stream.kafka_settings import KafkaSettings, parse_kafka_url
from stream.kafka_source import KafkaSource
from stream.records import Source


def open_source(url: str, *, position: dict | None = None, kafka: KafkaSettings | None = None,
                on_revoke: Callable[[], dict | None] | None = None) -> Source:
    """The source a URL names: ``kafka://...``, ``-`` for stdin, else a file path (``file://`` allowed).

    ``on_revoke`` (Kafka only): see :class:`KafkaSource`.
    """
    if url.startswith("kafka://"):
        return KafkaSource(url, kafka, position=position, on_revoke=on_revoke)
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        raise ValueError(f"unsupported source {url!r}: expected a file path, '-' or kafka://host:port/topic")
    return FileSource(url, position=position)


def check_source_url(url: str) -> None:
    """Raise what :func:`open_source` would for a malformed URL or a file that cannot be read, without
    connecting to anything: a run checks its source before it starts anything else."""
    if url.startswith("kafka://"):
        parse_kafka_url(url)
    elif url != "-":
        path = Path(url.removeprefix("file://"))
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = None  # opening it says what is wrong
        if mode is not None and not stat.S_ISREG(mode):
            # A named pipe: opening it here and closing it again would end the writer's stream (EPIPE) before
            # the run opens it for good; the run's own open reports what is wrong with it.
            if stat.S_ISDIR(mode):
                open_events_file(path)  # raises the directory message
            return
        open_source(url).close()  # a regular file: opening it is cheap, and says what is wrong
