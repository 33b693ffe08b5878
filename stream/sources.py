"""Where raw event payloads come from: JSON-lines files, stdin, or a Kafka topic, behind one small interface.

A :class:`Source` hands out raw bytes with a *position* after each record; the service stores the position
with its checkpoint and passes it back to :func:`open_source` to resume exactly after the last record it
applied. Sources never decode or validate: that is :func:`stream.events.parse_event`'s job, so that every
rejection, whatever its origin, goes through the same door to the dead-letter sink.

A Kafka topic is consumed in a group, but the service's checkpoint, not the group, is the truth of what this
worker's state holds; :class:`KafkaSource` explains how partitions move between workers.

>>> import io
>>> src = FileSource(io.BytesIO(b'{"a": 1}\\n\\n{"b": 2}'), name="demo")
>>> [(r.value, r.origin, r.position) for r in src.poll(10, 0.0)]
[(b'{"a": 1}', 'demo:1', {'offset': 9, 'line': 1}), (b'{"b": 2}', 'demo:3', {'offset': 18, 'line': 3})]
>>> src.exhausted
True
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gc
import gzip
import io
import logging
import lzma
import os
import select
import socket
import stat
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from stream.events import DEFAULT_LIMITS

log = logging.getLogger(__name__)

DEFAULT_GROUP = "dynalign"


class Record(NamedTuple):
    """One raw payload and the position to resume from once it has been applied.

    ``partition`` is the Kafka partition it came from (None for files); ``restoring`` marks a record this
    worker re-reads to rebuild its state although the group already processed it (see :class:`KafkaSource`).
    A tuple rather than a dataclass: one is built per event, on the hot path.
    """

    value: bytes
    position: dict
    origin: str
    key: bytes | None = None
    partition: int | None = None
    restoring: bool = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a burst of short-lived, acyclic allocations.

    Decoding a polled batch allocates several container objects per Kafka message (kafka-python's records,
    ours, their positions), all alive until the batch is applied. The collector, triggered by allocation
    counts, scans them again and again, promotes them, and every few batches traverses the whole heap, torch's
    hundreds of thousands of objects included, to free nothing: on the 2-core development machine that was 45%
    of the time of one-event-per-message ingestion and 20% of batched (``benchmarks/kafka_ingest.py``).
    Refcounting frees these objects; the collector resumes right after and collects whatever cycles other
    threads made meanwhile (the aligner's thread, at most a poll timeout late). Left alone when already disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Record(...) runs a Python-level __new__; this builds the same tuple in C, once per event on the Kafka hot path.
_new_record = functools.partial(tuple.__new__, Record)


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

    def pause(self) -> None:
        """Return no records until :meth:`resume` (a Kafka consumer keeps polling, so it stays in its group)."""
        ...

    def resume(self) -> None: ...

    def live_partitions(self) -> set[int] | None:
        """Partitions whose networks this worker may publish (owned, caught up); None: everything (files)."""
        ...

    def close(self) -> None: ...


class SourceUnavailable(RuntimeError):
    """The source could not be reached within its connect timeout."""


# --------------------------------------------------------------------------------------------------- files

_CHUNK = 1 << 16
# Compressed event files are read through their decompressor, recognised by their first bytes (whatever the
# name): otherwise every line of a .gz is dead-lettered as not UTF-8 and the run "succeeds" with nothing.
_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bzip2", bz2.open), (b"\xfd7zXZ\x00", "xz", lzma.open))
_DECOMPRESSORS = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)


def open_events_file(path: Path) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed if it is gzip, bzip2 or xz; ``FileNotFoundError`` or
    ``ValueError`` with a message that says what to pass instead."""
    hint = "a source is a JSONL file (may be gzip, bzip2 or xz), '-' for stdin, or kafka://HOST:PORT/TOPIC"
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"event source {path} does not exist ({hint})") from None
    except IsADirectoryError:
        raise ValueError(f"event source {path} is a directory ({hint})") from None
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        return stream  # a named pipe: peeking would take bytes that select-driven reads then miss
    head = stream.peek(8)[:8]
    for magic, kind, opener in _COMPRESSED:
        if head.startswith(magic):
            stream.close()
            log.info("%s is %s-compressed: reading it decompressed", path, kind)
            return opener(path, "rb")
    if head.startswith(b"PK\x03\x04"):
        stream.close()
        raise ValueError(f"event source {path} is a zip archive: unzip it, or gzip the JSONL file instead")
    return stream


class FileSource:
    """JSON lines from a file (gzip, bzip2 or xz ones decompressed), ``-`` (stdin) or any binary stream (tests
    inject ``io.BytesIO``).

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
            self._stream = open_events_file(Path(path))
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
        self._paused = False
        if position:
            try:
                offset, line = int(position["offset"]), int(position["line"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.name}: {position!r} is not a file position (offset, line)") from None
            if self._fd is None and self._stream.seekable():
                self._offset, self._line = offset, line
                self._stream.seek(offset)
                compressed = isinstance(self._stream, _DECOMPRESSORS)  # its size is not the stream's
                if self._owned and not compressed and os.fstat(self._stream.fileno()).st_size < offset:
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
        if self._paused:
            return []
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

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def live_partitions(self) -> None:
        return None

    def close(self) -> None:
        if self._owned:
            self._stream.close()


# --------------------------------------------------------------------------------------------------- Kafka


@dataclass
class KafkaSettings:
    """Client settings beyond the URL; ``extra`` goes to kafka-python's ``KafkaConsumer`` as is.

    Security options (SASL, SSL) are passed through to consumers and producers alike; secrets never show in a
    repr or a log line.

    >>> KafkaSettings(sasl_plain_username="svc", sasl_plain_password="hunter2")  # doctest: +ELLIPSIS
    KafkaSettings(group_id=None, ..., sasl_plain_username='svc', sasl_plain_password='***', ...)
    """

    group_id: str | None = None  # the URL's ?group= wins; else this; else "dynalign"
    client_id: str = "dynalign"
    group_instance_id: str | None = None  # static membership: a restarted worker gets its partitions back
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: str = "earliest"
    check_crcs: bool = True
    connect_timeout_s: float = 60.0
    commit_timeout_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    SECRETS = ("sasl_plain_password", "ssl_password")
    _SECURITY = ("client_id", "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
    _NOT_KAFKA = ("group_id", "connect_timeout_s", "commit_timeout_s", "extra")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECRETS and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"KafkaSettings({', '.join(shown)})"

    def _options(self, names: tuple[str, ...] | None) -> dict[str, Any]:
        chosen = [f.name for f in fields(self) if f.name not in self._NOT_KAFKA and (names is None or f.name in names)]
        return {name: getattr(self, name) for name in chosen if getattr(self, name) is not None}

    def consumer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaConsumer`` (group and servers excluded), unset options left out."""
        return {**self._options(None), **self.extra}

    def producer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer``: client id and security options only."""
        return self._options(self._SECURITY)


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


def unreachable(servers: list[str], timeout_s: float) -> list[str]:
    """Why no server of ``servers`` accepts a TCP connection (one reason each); ``[]`` as soon as one does."""
    errors = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return []
        except OSError as e:
            errors.append(f"{server}: {e}")
    return errors


def wait_for_brokers(servers: list[str], timeout_s: float, what: str) -> None:
    """Block until some bootstrap server accepts a TCP connection, backing off 0.5 s → 10 s, at most ``timeout_s``.

    kafka-python would otherwise fail its bootstrap with an opaque timeout; this says which servers and why.
    """
    deadline = time.monotonic() + timeout_s
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        errors = unreachable(servers, max(0.1, min(5.0, deadline - time.monotonic())))  # a dropped SYN must not overrun
        if not errors:
            if attempt > 1:
                log.info("Kafka broker of %s is reachable", what)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceUnavailable(f"no Kafka broker of {what} reachable after {timeout_s:g} s "
                                    f"({attempt} attempts; last: {'; '.join(errors)})")
        wait = min(delay, left)
        log.warning("Kafka not reachable for %s (%s); retrying in %.1f s", what, "; ".join(errors), wait)
        time.sleep(wait)
        delay = min(delay * 2, 10.0)


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
                            add(_new_record((line, position, f"{origin}#{line_no}", message.key, partition, restoring)))
                else:
                    add(_new_record((value, position, origin, message.key, partition, restoring)))
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
