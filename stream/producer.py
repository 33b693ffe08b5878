"""Putting event streams onto Kafka: ``dynalign feed``, and the producer the dead-letter topic uses.

Users replay a dataset or a recorded stream into the topic the service consumes, as a live source would:
every event is keyed by its network, so one network's events stay in order in one partition (Kafka orders
only within a partition), and ``rate`` paces a live replay. Lines are sent as they are, malformed ones too
(unkeyed, unless one key is given for all): rejecting them is the consumer's job, so that a feed exercises the
same dead-letter path as a misbehaving producer would.

``batch`` > 1 packs up to that many events of one key into a message, one per line. kafka-python spends about
as long decoding a record as dynalign spends applying an event, so this roughly doubles what one consumer
ingests; consumers accept both forms.

>>> edge = b'{"op":"add_edge","net":"a","u":1,"v":2,"time":5}'
>>> [(key, value[:12]) for key, value in keyed_messages([edge, b"not json", edge], key=None, batch=1)]
[(b'a', b'{"op":"add_e'), (None, b'not json'), (b'a', b'{"op":"add_e')]
>>> [(key, value.count(b"\\n") + 1) for key, value in keyed_messages([edge] * 5, key="g", batch=2)]
[(b'g', 2), (b'g', 2), (b'g', 1)]
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from stream.events import InvalidEvent, parse_event
from stream.kafka_settings import KafkaSettings, parse_kafka_url, wait_for_brokers
from stream.records import SourceUnavailable

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.1  # a paced feed sends partial batches at least this often, so its latency stays low


def kafka_producer(servers: list[str], settings: KafkaSettings | None = None, **overrides: Any) -> Any:
    """A ``KafkaProducer`` with the settings' security options, acks from all replicas and idempotence, so a
    retried send is not written twice."""
    from kafka import KafkaProducer

    settings = settings or KafkaSettings()
    wait_for_brokers(servers, settings.connect_timeout_s, ",".join(servers))
    config = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "batch_size": 256 * 1024,
              "reconnect_backoff_ms": 500, "reconnect_backoff_max_ms": 10_000,
              **settings.producer_config(), **overrides}
    try:
        return KafkaProducer(bootstrap_servers=servers, **config)
    except Exception as e:  # kafka-python raises several unrelated types for "cannot talk to the cluster"
        raise SourceUnavailable(f"cannot produce to {','.join(servers)}: {type(e).__name__}: {e}") from e


@dataclass
class FeedSummary:
    events: int = 0  # lines sent (valid events and malformed lines)
    malformed: int = 0  # lines that are not valid events, sent unkeyed for the consumer to dead-letter
    messages: int = 0  # Kafka messages (fewer than events with batch > 1)
    failed: int = 0  # messages Kafka did not acknowledge
    oversized: int = 0  # lines over the producer's max_request_size: not sent (not an event: over the payload limit)
    passes: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def feed(path: str | Path, url: str, *, settings: KafkaSettings | None = None, rate: float | None = None,
         loop: bool = False, key: str | None = None, batch: int = 1, limit: int | None = None,
         progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> FeedSummary:
    """Send the JSON lines of ``path`` (``-``: stdin) to the topic of ``url``, in order.

    ``key``: one message key for every event instead of its network (keeps networks that are aligned together
    in one partition). ``rate``: events per second (a live replay). ``loop``: replay the file until ``limit``
    events or ``stop``; each later pass shifts event times by the file's time span and suffixes event ids with
    ``~pass``, so the consumer sees new events rather than duplicates. ``progress(n)`` is called with the number
    of events just sent.
    """
    if loop and str(path) == "-":
        raise ValueError("--loop needs a file: stdin cannot be replayed")

    def passes() -> Iterator[Iterable[bytes]]:
        for pass_no in range(sys.maxsize if loop else 1):
            with _open(path) as stream:
                if pass_no == 0:
                    lines = _lines(stream)
                    if loop:
                        lines, span_of = _measuring(lines)
                    yield lines
                    span = span_of() if loop else 0.0
                else:
                    yield _shifted(_lines(stream), pass_no, span)

    return _produce(passes(), url, settings=settings, rate=rate, key=key, batch=batch, limit=limit,
                    progress=progress, stop=stop)


def feed_lines(lines: Iterable[bytes], url: str, *, settings: KafkaSettings | None = None, rate: float | None = None,
               key: str | None = None, batch: int = 1, limit: int | None = None,
               progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> FeedSummary:
    """Send event lines (without line breaks) to the topic of ``url`` in order, as :func:`feed` sends a file's:
    ``dynalign replay --to-kafka`` re-feeds the recorded event log with it."""
    return _produce(iter([lines]), url, settings=settings, rate=rate, key=key, batch=batch, limit=limit,
                    progress=progress, stop=stop)


def _produce(passes: Iterator[Iterable[bytes]], url: str, *, settings: KafkaSettings | None, rate: float | None,
             key: str | None, batch: int, limit: int | None, progress: Callable[[int], None] | None,
             stop: threading.Event | None) -> FeedSummary:
    """Produce each pass of lines in turn until ``limit`` events, ``stop``, the last pass, or an empty pass."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    servers, topic, _ = parse_kafka_url(url)
    producer = kafka_producer(servers, settings)
    summary = FeedSummary()
    errors_lock = threading.Lock()

    def failed(exc: BaseException) -> None:
        with errors_lock:
            summary.failed += 1
            summary.first_error = summary.first_error or f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    try:
        pace = _Pace(rate, started)
        for lines in passes:
            summary.passes += 1
            sent_before = summary.events
            budget = None if limit is None else limit - summary.events
            for message_key, value, events, malformed in _messages(lines, key, batch, budget):
                if stop is not None and stop.is_set():
                    return summary
                pace.wait(summary.events)
                if not _send(producer, topic, message_key, value, failed):
                    # too large for one message: a batch goes line by line; a line alone that large is skipped
                    # (beyond any payload limit, it could only be a dead letter) and the feed goes on
                    parts = value.split(b"\n") if events > 1 else [value]
                    sent = [_send(producer, topic, message_key, part, failed) for part in parts]
                    skipped = [part for part, ok in zip(parts, sent) if not ok]
                    summary.oversized += len(skipped)
                    events -= len(skipped)
                    malformed -= sum(_network(part) is None for part in skipped)
                    summary.messages += sent.count(True) - 1
                summary.events += events
                summary.malformed += malformed
                summary.messages += 1
                if progress:
                    progress(events)
            if (limit is not None and summary.events >= limit) or summary.events == sent_before:  # or empty file
                break
        return summary
    finally:
        producer.flush()
        producer.close()
        summary.seconds = time.monotonic() - started


def _send(producer, topic: str, key: bytes | None, value: bytes, failed: Callable[[BaseException], None]) -> bool:
    """Send one message; False if it is larger than the producer may send (kafka-python raises that at once)."""
    from kafka.errors import MessageSizeTooLargeError

    try:
        producer.send(topic, value=value, key=key).add_errback(failed)
    except MessageSizeTooLargeError:
        return False
    return True


def keyed_messages(lines: Iterable[bytes], key: str | None, batch: int) -> Iterator[tuple[bytes | None, bytes]]:
    """(message key, value) pairs for ``lines``: see :func:`feed`."""
    for message_key, value, _, _ in _messages(lines, key, batch, None):
        yield message_key, value


class _Pace:
    """Holds a feed to ``rate`` events per second on average (sleeping only when ahead by a few ms)."""

    def __init__(self, rate: float | None, started: float):
        self.rate, self.started = rate, started

    def wait(self, sent: int) -> None:
        if self.rate is None:
            return
        ahead = self.started + sent / self.rate - time.monotonic()
        if ahead > 0.005:
            time.sleep(ahead)


def _messages(lines: Iterable[bytes], key: str | None, batch: int,
              budget: int | None) -> Iterator[tuple[bytes | None, bytes, int, int]]:
    """(message key, value, lines in it, malformed lines in it) for at most ``budget`` lines, batching up to
    ``batch`` lines per key."""
    fixed = key.encode() if key is not None else None
    pending: dict[bytes, tuple[list[bytes], list[int]]] = {}  # key -> (lines, [malformed among them])
    last_flush = time.monotonic()
    for taken, line in enumerate(lines):
        if budget is not None and taken >= budget:
            break
        net = _network(line)
        line_key = fixed or net
        if line_key is None:  # malformed: alone, unkeyed, for the consumer's dead-letter topic
            yield None, line, 1, 1
            continue
        if batch == 1:
            yield line_key, line, 1, int(net is None)
            continue
        lines_of_key, malformed = pending.setdefault(line_key, ([], [0]))
        lines_of_key.append(line)
        malformed[0] += net is None
        if len(lines_of_key) >= batch:
            yield line_key, b"\n".join(lines_of_key), len(lines_of_key), malformed[0]
            del pending[line_key]
        if time.monotonic() - last_flush > FLUSH_EVERY_S:
            yield from _drain(pending)
            last_flush = time.monotonic()
    yield from _drain(pending)


def _drain(pending: dict[bytes, tuple[list[bytes], list[int]]]) -> Iterator[tuple[bytes, bytes, int, int]]:
    for line_key, (lines_of_key, malformed) in pending.items():
        yield line_key, b"\n".join(lines_of_key), len(lines_of_key), malformed[0]
    pending.clear()


def _network(line: bytes) -> bytes | None:
    """The network an event line belongs to, or None if the line is not a valid event."""
    try:
        return parse_event(line).net.encode()
    except InvalidEvent:
        return None


def _open(path: str | Path) -> Any:
    if str(path) == "-":
        return _NoClose(sys.stdin.buffer)
    return open(path, "rb")


class _NoClose:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        pass


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Non-blank lines without their line break, as :class:`stream.file_source.FileSource` reads them."""
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield line


def _measuring(lines: Iterator[bytes]) -> tuple[Iterator[bytes], Callable[[], float]]:
    """Pass ``lines`` through, noting the earliest and latest event time; the callable gives the span."""
    bounds = [float("inf"), float("-inf")]

    def through() -> Iterator[bytes]:
        for line in lines:
            try:
                t = parse_event(line).time
                bounds[0], bounds[1] = min(bounds[0], t), max(bounds[1], t)
            except InvalidEvent:
                pass
            yield line

    # One second past the span: the next pass starts just after this one ends, never on top of it.
    return through(), lambda: (bounds[1] - bounds[0] + 1.0) if bounds[0] <= bounds[1] else 1.0


def _shifted(lines: Iterator[bytes], pass_no: int, span: float) -> Iterator[bytes]:
    """Later passes of a looped feed: times moved on by ``pass_no * span``, ids made unique; bad lines as they are."""
    for line in lines:
        try:
            event = parse_event(line).to_dict()
        except InvalidEvent:
            yield line
            continue
        event["time"] += pass_no * span
        if "id" in event:
            event["id"] = f"{event['id']}~{pass_no}"
        yield json.dumps(event, separators=(",", ":")).encode()
