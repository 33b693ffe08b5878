"""How to reach a Kafka cluster: client settings beyond the URL, ``kafka://`` URLs, and waiting for brokers."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stream.records import SourceUnavailable

log = logging.getLogger(__name__)

DEFAULT_GROUP = "dynalign"


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
