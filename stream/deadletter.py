"""Where rejected payloads go, so that a bad event costs one line in a file rather than the service.

:func:`stream.events.parse_event` decides *what* is invalid; this module keeps the evidence: the original
payload, the reason, and where it came from, one JSON object per line, in a file an operator can grep and
replay after fixing the producer. A Kafka topic can receive the same lines (with the reason also as a message
header), for teams that watch topics rather than files. The file is the durable record; the topic is best
effort with the producer's retries, and a payload too large for a message is cut there (never in the file).

>>> import json, tempfile
>>> path = Path(tempfile.mkdtemp()) / "dlq" / "rejected.jsonl"
>>> with DeadLetterSink(path) as dlq:
...     dlq.write(b'{"op": "add_edge"', "not valid JSON: Expecting ',' delimiter", "events.jsonl:7")
>>> line = json.loads(path.read_text())
>>> line["reason"], line["origin"], line["payload"]
("not valid JSON: Expecting ',' delimiter", 'events.jsonl:7', '{"op": "add_edge"')
>>> dlq.count, dict(dlq.by_reason_kind)
(1, {'not valid JSON': 1})
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

# A flood of distinct garbage must not grow the counter without bound; past this many kinds, new ones are
# lumped together.
MAX_REASON_KINDS = 64
OTHER_KIND = "other"
# Payload characters kept in a dead-letter *message*: Kafka's default message limit is 1 MB, and an oversized
# payload is a classic reason for rejection.
MAX_TOPIC_PAYLOAD_CHARS = 64 * 1024
# A reason may quote the input (an unknown op, a bad value): cut it so that it never outgrows a Kafka header.
MAX_REASON_CHARS = 1000
# A topic that is down fails every entry: say so at once, then with the running count at this pace.
FAILURE_LOG_EVERY_S = 30.0

_OP_PREFIX = re.compile(r"^[a-z_]+:\s+")
# Quoted text is usually a user value (a node id, an unknown op) and would make every line its own kind;
# right after "field(s)" it names one of a few wire fields, which is worth keeping.
_QUOTED = re.compile(r"(\bfields? )?('[^']*'|\"[^\"]*\")")
_NUMBER = re.compile(r"(?<![\w.-])[-+]?\d[\w.+-]*")
_CLAUSE_END = re.compile(r"[:,(=]")


def reason_kind(reason: str) -> str:
    """A short, low-cardinality label for a reason, for counting.

    The first clause of the reason (up to ``:``, ``,``, ``(`` or ``=``), without a leading ``<op>:`` prefix,
    with numbers shown as ``N`` and quoted values dropped unless they name a field.

    >>> reason_kind("not valid JSON: Expecting value: line 1 column 1 (char 0)")
    'not valid JSON'
    >>> reason_kind("add_edge: self-loop on node 'x7' (u == v)")
    'self-loop on node'
    >>> reason_kind("add_anchor: missing fields 'to', 'to_node'")
    "missing fields 'to'"
    >>> reason_kind("field 'time' = 1.7e+12 is outside [0, 1e+11] unix seconds (milliseconds by mistake?)")
    "field 'time'"
    >>> reason_kind("payload of 2000000 bytes exceeds the limit of 1048576")
    'payload of N bytes exceeds the limit of N'
    """
    text = _OP_PREFIX.sub("", reason.strip(), count=1)
    text = _QUOTED.sub(lambda m: m.group(0) if m.group(1) else "", text)
    text = _NUMBER.sub("N", text)
    clause = _CLAUSE_END.split(text, maxsplit=1)[0]
    return " ".join(clause.split())[:80] or OTHER_KIND


def _stored_payload(payload: bytes | str) -> tuple[str, str]:
    """The field and value a payload is stored under: ``payload`` with its text, or ``payload_b64`` where it is
    bytes that are not UTF-8."""
    if isinstance(payload, str):
        return "payload", payload
    try:
        return "payload", bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return "payload_b64", base64.b64encode(payload).decode("ascii")


class DeadLetterSink:
    """Appends rejected payloads to a JSONL file (and optionally a Kafka topic).

    Lines are buffered; :meth:`flush` pushes them to the OS and, with ``durable=True``, to disk: the service
    does that before each checkpoint so that a resumed run never loses a rejection it has already skipped.
    ``producer`` is a kafka-python ``KafkaProducer`` owned by the caller: it is flushed here (waiting at most
    ``flush_timeout_s``), never closed. ``topic_failures`` counts messages the topic did not get.

    ``truncate_to``: the :attr:`durable_size` a checkpoint recorded; lines written after it (by a run that
    crashed before its next checkpoint, whose records are read again) are cut, so the file holds each
    rejection once. The topic cannot be cut: there, a crash can repeat a rejection.
    """

    def __init__(self, path: Path | str, *, topic: str | None = None, producer: Any = None,
                 flush_timeout_s: float = 10.0, truncate_to: int | None = None):
        if (topic is None) != (producer is None):
            raise ValueError("a dead-letter topic needs a producer, and a producer needs a topic")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # What the cut removed, by origin and payload: a record re-read as *restored* (one the group had
        # committed) is written again only if it is among them (see :meth:`write`).
        self._rolled_back: set[tuple[str, str | None]] = set()
        if truncate_to is not None and self.path.exists() and self.path.stat().st_size > truncate_to:
            with open(self.path, "r+b") as f:
                f.seek(truncate_to)
                for raw in f.read().splitlines():
                    try:
                        cut = json.loads(raw)
                        self._rolled_back.add((cut["origin"], cut.get("payload", cut.get("payload_b64"))))
                    except (ValueError, KeyError, TypeError):  # a torn last line: nothing to remember
                        continue
                f.truncate(truncate_to)
                os.fsync(f.fileno())
        self._file = self.path.open("a", encoding="utf-8")
        self.durable_size = self._file.tell()
        self.topic = topic
        self._producer = producer
        self._flush_timeout_s = flush_timeout_s
        self.count = 0
        self.topic_failures = 0
        self.by_reason_kind: Counter[str] = Counter()
        self._failures_logged_at = -math.inf  # monotonic time of the last topic-failure warning

    def write(self, payload: bytes | str, reason: str, origin: str, restored: bool = False) -> None:
        """Record one rejected payload; ``origin`` says where it came from (``"events.jsonl:12"``).

        ``restored``: the record was re-read from before the group's committed offset, so a worker already
        rejected it: another one (whose file has it), or this one before its newest checkpoint was lost and the
        file was cut back to an older one. Only in the second case, the cut having removed it, is it written.
        """
        if restored:
            key = (origin, _stored_payload(payload)[1])
            if key not in self._rolled_back:
                return
            self._rolled_back.discard(key)
        if len(reason) > MAX_REASON_CHARS:  # a reason may quote the input: it must not grow with it
            reason = f"{reason[:MAX_REASON_CHARS]}… ({len(reason) - MAX_REASON_CHARS} more characters)"
        field, stored = _stored_payload(payload)
        entry: dict[str, Any] = {"reason": reason, "origin": origin, field: stored, "at": time.time()}
        # ensure_ascii keeps lone surrogates (possible in str payloads) from breaking the UTF-8 file.
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
        self._file.write(line + "\n")
        if self._producer is not None:
            self._send(entry, line, reason, origin)
        self.count += 1
        kind = reason_kind(reason)
        if kind not in self.by_reason_kind and len(self.by_reason_kind) >= MAX_REASON_KINDS:
            kind = OTHER_KIND
        self.by_reason_kind[kind] += 1

    def _send(self, entry: dict[str, Any], line: str, reason: str, origin: str) -> None:
        for name in ("payload", "payload_b64"):
            if len(entry.get(name, "")) > MAX_TOPIC_PAYLOAD_CHARS:
                entry = {**entry, name: entry[name][:MAX_TOPIC_PAYLOAD_CHARS], "payload_truncated": True}
                line = json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
        try:
            future = self._producer.send(self.topic, value=line.encode("utf-8"), key=origin.encode("utf-8"),
                                         headers=[("reason", reason.encode("utf-8"))])
            future.add_errback(self._topic_failed)
        except Exception as e:  # buffer full while the broker is away, and the like: the file has the entry
            self._topic_failed(e)

    def _topic_failed(self, exc: BaseException) -> None:
        self.topic_failures += 1
        now = time.monotonic()  # the first failure, then at most one warning every FAILURE_LOG_EVERY_S
        if now - self._failures_logged_at >= FAILURE_LOG_EVERY_S:
            self._failures_logged_at = now
            log.warning("dead-letter topic %s did not get %d entr%s (latest: %s: %s); %s has them all",
                        self.topic, self.topic_failures, "y" if self.topic_failures == 1 else "ies",
                        type(exc).__name__, exc, self.path)

    def flush(self, durable: bool = False) -> None:
        """Hand buffered lines to the OS; ``durable=True`` also waits until they are on disk."""
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())
            self.durable_size = self._file.tell()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=self._flush_timeout_s)
            except Exception as e:  # the producer keeps retrying in the background; the file is the record
                log.warning("dead-letter topic %s not confirmed within %g s (%s: %s); still retrying",
                            self.topic, self._flush_timeout_s, type(e).__name__, e)

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush(durable=True)
        self._file.close()

    def __enter__(self) -> DeadLetterSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
