"""Where raw event payloads come from: JSON-lines files, stdin, or a Kafka topic, behind one small interface.

A :class:`Source` hands out raw bytes with a *position* after each record; the service stores the position
with its checkpoint and passes it back to :func:`open_source` to resume exactly after the last record it
applied. Sources never decode or validate: that is :func:`stream.events.parse_event`'s job, so that every
rejection, whatever its origin, goes through the same door to the dead-letter sink.

>>> import io
>>> src = FileSource(io.BytesIO(b'{"a": 1}\\n\\n{"b": 2}'), name="demo")
>>> [(r.value, r.origin, r.position) for r in src.poll(10, 0.0)]
[(b'{"a": 1}', 'demo:1', {'offset': 9, 'line': 1}), (b'{"b": 2}', 'demo:3', {'offset': 18, 'line': 3})]
>>> src.exhausted
True
"""

from __future__ import annotations

import io
import logging
import os
import select
import socket
import stat
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from stream.events import DEFAULT_LIMITS

log = logging.getLogger(__name__)

DEFAULT_GROUP = "dynalign"


@dataclass(frozen=True)
class Record:
    """One raw payload and the position to resume from once it has been applied."""

    value: bytes
    position: dict
    origin: str
    key: bytes | None = None


@runtime_checkable
class Source(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, in order; ``[]`` if none arrived within ``timeout_s``."""
        ...

    @property
    def exhausted(self) -> bool:
        """A finite source read to its end (Kafka topics never are)."""
        ...

    def commit(self, position: dict) -> None:
        """Everything up to ``position`` is durably applied downstream."""
        ...

    def close(self) -> None: ...


class SourceUnavailable(RuntimeError):
    """The source could not be reached within its connect timeout."""


# --------------------------------------------------------------------------------------------------- files

_CHUNK = 1 << 16


class FileSource:
    """JSON lines from a file, ``-`` (stdin) or any binary stream (tests inject ``io.BytesIO``).

    Position ``{"offset": bytes consumed, "line": lines consumed}``. A regular file or seekable stream
    resumes by seeking there; stdin cannot seek, so a position is ignored for it (a re-run feeds it afresh).
    Blank lines are skipped, a last line without a newline is still a record, and a line longer than
    ``max_line_bytes`` is cut to that length (and dropped up to its newline) so one runaway line cannot
    exhaust memory: the truncated record then fails validation and lands in the dead-letter file.
    Pipes and terminals are read with ``select`` so that ``poll`` honours its timeout on a quiet stdin.
    """

    def __init__(
        self,
        path: str | Path | BinaryIO,
        *,
        position: dict | None = None,
        name: str | None = None,
        max_line_bytes: int = DEFAULT_LIMITS.max_payload_bytes + 1,
    ):
        self._owned = False
        if isinstance(path, (str, Path)) and str(path) == "-":
            self._stream: BinaryIO = sys.stdin.buffer
            self.name = name or "<stdin>"
            position = None
        elif isinstance(path, (str, Path)):
            self._stream = open(path, "rb")
            self._owned = True
            self.name = name or str(path)
        else:
            self._stream = path
            self.name = name or getattr(path, "name", None) or "<stream>"
        self._max_line = max_line_bytes
        self._fd = self._select_fd(self._stream)
        self._buf = b""
        self._pos = 0  # index in _buf of the first unconsumed byte
        self._offset = 0  # stream offset of _buf[0]
        self._line = 0
        self._eof = False
        self._skipping = False  # inside an over-long line, dropping bytes up to its newline
        if position:
            try:
                offset, line = int(position["offset"]), int(position["line"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.name}: {position!r} is not a file position (offset, line)") from None
            if self._fd is None and self._stream.seekable():
                self._offset, self._line = offset, line
                self._stream.seek(offset)
                if self._owned and os.fstat(self._stream.fileno()).st_size < offset:
                    log.warning("%s is shorter than the resume offset %d: truncated or replaced?", self.name, offset)
            else:
                log.info("%s cannot seek; ignoring the resume position %s", self.name, position)

    @staticmethod
    def _select_fd(stream: BinaryIO) -> int | None:
        """The descriptor to ``select`` on if ``stream`` is a pipe, socket or terminal, else None."""
        try:
            fd = stream.fileno()
            return None if stat.S_ISREG(os.fstat(fd).st_mode) else fd
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None

    @property
    def exhausted(self) -> bool:
        return self._eof and self._pos >= len(self._buf)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        out: list[Record] = []
        while len(out) < max_records:
            record = self._next_record()
            if record is not None:
                out.append(record)
            elif self.exhausted or not self._fill(0.0 if out else max(0.0, deadline - time.monotonic())):
                break
        return out

    def _next_record(self) -> Record | None:
        """The next non-blank line already in the buffer, or None if it needs more input."""
        buf = self._buf
        while self._pos < len(buf):
            start = self._pos
            end = buf.find(b"\n", start)
            if end < 0:
                if not self._eof:
                    return None
                end = len(buf)  # the last line has no newline
            self._pos = end + 1
            self._line += 1
            value = buf[start:end]
            if value.endswith(b"\r"):
                value = value[:-1]
            if value.strip():
                position = {"offset": self._offset + min(self._pos, len(buf)), "line": self._line}
                return Record(value=value, position=position, origin=f"{self.name}:{self._line}")
        return None

    def _fill(self, timeout_s: float) -> bool:
        """Read one chunk into the buffer; False if nothing arrived within the timeout."""
        if self._fd is not None:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
            if not ready:
                return False
            data = os.read(self._fd, _CHUNK)
        else:
            data = getattr(self._stream, "read1", self._stream.read)(_CHUNK)
        self._offset += self._pos
        buf, self._pos = self._buf[self._pos :], 0
        if not data:
            self._eof = True
            self._buf = buf
            return True
        # Bytes dropped from a runaway line are added to _offset: it then addresses everything after the
        # kept head correctly, and no position is ever taken inside the head.
        if self._skipping:  # buf is the kept head of a runaway line; drop input up to its newline
            newline = data.find(b"\n")
            if newline < 0:
                self._offset += len(data)
                self._buf = buf
                return True
            self._offset += newline
            data, self._skipping = data[newline:], False
        buf += data
        if len(buf) > self._max_line and buf.find(b"\n", 0, self._max_line + 1) < 0:
            newline = buf.find(b"\n", self._max_line)
            self._skipping = newline < 0
            end = len(buf) if self._skipping else newline
            self._offset += end - self._max_line
            buf = buf[: self._max_line] + buf[end:]
        self._buf = buf
        return True

    def commit(self, position: dict) -> None:
        """Nothing to do: a file's position lives in the service's checkpoint."""

    def close(self) -> None:
        if self._owned:
            self._stream.close()


# --------------------------------------------------------------------------------------------------- Kafka


@dataclass
class KafkaSettings:
    """Consumer settings beyond the URL; ``extra`` goes to kafka-python's ``KafkaConsumer`` as is.

    >>> KafkaSettings(sasl_plain_username="svc", sasl_plain_password="hunter2")  # doctest: +ELLIPSIS
    KafkaSettings(group_id=None, ..., sasl_plain_username='svc', sasl_plain_password='***', ...)
    """

    group_id: str | None = None  # the URL's ?group= wins; else this; else "dynalign"
    client_id: str = "dynalign"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: str = "earliest"
    connect_timeout_s: float = 60.0
    commit_timeout_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sasl_plain_password" and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"KafkaSettings({', '.join(shown)})"

    def consumer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaConsumer`` (group and servers excluded), unset options left out."""
        ours = ("group_id", "connect_timeout_s", "commit_timeout_s", "extra")
        config = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ours}
        return {**{k: v for k, v in config.items() if v is not None}, **self.extra}


def parse_kafka_url(url: str) -> tuple[list[str], str, str | None]:
    """``kafka://host:port[,host2:port]/topic[?group=NAME]`` → (bootstrap servers, topic, group or None).

    >>> parse_kafka_url("kafka://k1:9092,k2:9093/events?group=aligner")
    (['k1:9092', 'k2:9093'], 'events', 'aligner')
    >>> parse_kafka_url("kafka://localhost:9092")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Kafka URL 'kafka://localhost:9092' names no topic; expected kafka://host:port[,host:port]/topic...
    """
    expected = "expected kafka://host:port[,host:port]/topic[?group=NAME]"
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a Kafka URL: {url!r}; {expected}")
    servers = [s.strip() for s in parts.netloc.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"Kafka URL {url!r} names no broker; {expected}")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Kafka URL {url!r}: broker {server!r} is not host:port; {expected}")
    topic = parts.path.strip("/")
    if not topic:
        raise ValueError(f"Kafka URL {url!r} names no topic; {expected}")
    if "/" in topic:
        raise ValueError(f"Kafka URL {url!r}: topic {topic!r} contains '/'; {expected}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"group"})
    if unknown:
        raise ValueError(f"Kafka URL {url!r}: unknown parameter(s) {', '.join(unknown)}; {expected}")
    groups = query.get("group", [])
    if len(groups) > 1 or (groups and not groups[0]):
        raise ValueError(f"Kafka URL {url!r}: give one non-empty group; {expected}")
    return servers, topic, (groups[0] if groups else None)


class KafkaSource:
    """Records from one Kafka topic, consumed in a group with offsets committed only on :meth:`commit`.

    Position ``{"topic": t, "offsets": {"<partition>": next offset}}``. Partitions found in the resume
    position are sought there whenever they are assigned (at start and after a rebalance, when the
    offsets tracked since then are used), so the service's checkpoint, not the group's committed offset,
    decides where reading resumes; other partitions start at the committed offset or ``auto_offset_reset``.
    """

    def __init__(self, url: str, settings: KafkaSettings | None = None, *, position: dict | None = None):
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        self.url = url
        self.settings = settings = settings or KafkaSettings()
        servers, self.topic, url_group = parse_kafka_url(url)
        self.group = url_group or settings.group_id or DEFAULT_GROUP
        self._offsets: dict[str, int] = {}
        if position:
            if not isinstance(position.get("offsets"), dict):
                raise ValueError(f"{url}: {position!r} is not a Kafka position (topic, offsets)")
            if position.get("topic") == self.topic:
                self._offsets = {str(p): int(o) for p, o in position["offsets"].items()}
            else:
                log.warning("resume position is for topic %r, not %r; ignoring it", position.get("topic"), self.topic)

        deadline = time.monotonic() + settings.connect_timeout_s
        if "proxy_url" not in settings.extra:  # a proxy hides the brokers from a direct probe
            self._wait_for_brokers(servers, deadline)
        config = settings.consumer_config()
        # kafka-python retries with its own backoff; bound it like ours so a lost broker is retried often enough.
        config.setdefault("reconnect_backoff_ms", 500)
        config.setdefault("reconnect_backoff_max_ms", 10_000)
        config["bootstrap_timeout_ms"] = int(max(1.0, deadline - time.monotonic()) * 1000)
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=servers, group_id=self.group, enable_auto_commit=False, **config
            )
        except Exception as e:  # kafka-python raises several unrelated types for "cannot talk to the cluster"
            raise SourceUnavailable(f"cannot consume from {url}: {type(e).__name__}: {e}") from e

        source = self

        class _SeekOnAssign(ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned: Any) -> None:
                for tp in assigned:
                    offset = source._offsets.get(str(tp.partition))
                    if offset is not None:
                        source._consumer.seek(tp, offset)
                log.info("%s: assigned partitions %s", url, sorted(tp.partition for tp in assigned))

            def on_partitions_revoked(self, revoked: Any) -> None:
                if revoked:
                    log.info("%s: revoked partitions %s", url, sorted(tp.partition for tp in revoked))

        self._consumer.subscribe([self.topic], listener=_SeekOnAssign())
        log.info("consuming %s as group %r", url, self.group)

    def _wait_for_brokers(self, servers: list[str], deadline: float) -> None:
        """Block until some bootstrap server accepts a TCP connection, backing off 0.5 s → 10 s."""
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            errors = []
            for server in servers:
                host, _, port = server.rpartition(":")
                try:
                    timeout = max(0.1, min(5.0, deadline - time.monotonic()))  # a dropped SYN must not overrun
                    socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
                    if attempt > 1:
                        log.info("Kafka broker %s is reachable", server)
                    return
                except OSError as e:
                    errors.append(f"{server}: {e}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceUnavailable(
                    f"no Kafka broker of {self.url} reachable after {self.settings.connect_timeout_s:g} s "
                    f"({attempt} attempts; last: {'; '.join(errors)})"
                )
            wait = min(delay, left)
            log.warning("Kafka not reachable for %s (%s); retrying in %.1f s", self.url, "; ".join(errors), wait)
            time.sleep(wait)
            delay = min(delay * 2, 10.0)

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def assigned(self) -> set[int]:
        """Partitions of the topic this consumer currently owns (empty until the group is joined)."""
        return {tp.partition for tp in self._consumer.assignment()}

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = []
        for tp in sorted(batches, key=lambda tp: tp.partition):
            for message in batches[tp]:
                self._offsets[str(tp.partition)] = message.offset + 1
                out.append(
                    Record(
                        value=message.value if message.value is not None else b"",
                        position={"topic": self.topic, "offsets": dict(self._offsets)},
                        origin=f"kafka:{self.topic}[{tp.partition}]@{message.offset}",
                        key=message.key,
                    )
                )
        return out

    def commit(self, position: dict) -> None:
        """Commit ``position``'s offsets for the partitions still owned.

        A failure (broker gone, rebalance, ``commit_timeout_s`` passed) is logged, not raised.
        """
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        owned = self.assigned
        offsets = {
            TopicPartition(self.topic, int(p)): OffsetAndMetadata(int(o), "", -1)
            for p, o in position.get("offsets", {}).items()
            if int(p) in owned
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=int(self.settings.commit_timeout_s * 1000))
        except KafkaError as e:
            # Not fatal: the checkpoint holds the position, and the next commit covers these offsets.
            log.warning("commit to %s failed (%s: %s); the next commit will cover it", self.url, type(e).__name__, e)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def open_source(url: str, *, position: dict | None = None, kafka: KafkaSettings | None = None) -> Source:
    """The source a URL names: ``kafka://...``, ``-`` for stdin, else a file path (``file://`` allowed)."""
    if url.startswith("kafka://"):
        return KafkaSource(url, kafka, position=position)
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        raise ValueError(f"unsupported source {url!r}: expected a file path, '-' or kafka://host:port/topic")
    return FileSource(url, position=position)
