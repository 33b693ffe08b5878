"""The service's connections from its configuration: Redis (the configured server, or the embedded one under
the state dir), the dead-letter sink (and its Kafka producer) and the Kafka client settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aligner.config import Config
from aligner.publish.embedded_redis import EmbeddedRedis
from stream.deadletter import DeadLetterSink
from stream.kafka_settings import KafkaSettings, parse_kafka_url

log = logging.getLogger("dynalign.service")


def redis_for(cfg: Config) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """The configured Redis, or the embedded server under the state dir when none is configured.

    One attempt per command and short timeouts: the service retries publications itself, with backoff, and
    must not stall its poll loop waiting for a Redis that is away.
    """
    options = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0, "retry": Retry(NoBackoff(), 0)}
    if cfg.publish.redis_url:
        return redis.Redis.from_url(cfg.publish.redis_url, **options), None
    server = EmbeddedRedis(Path(cfg.service.state_dir) / "redis").start()
    return redis.Redis.from_url(server.url, **options), server


def kafka_settings(cfg: Config) -> KafkaSettings:
    s = cfg.stream
    return KafkaSettings(
        group_id=s.kafka_group, group_instance_id=s.kafka_instance_id, security_protocol=s.kafka_security_protocol,
        sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
        sasl_plain_password=s.kafka_sasl_password, ssl_cafile=s.kafka_ssl_cafile, ssl_certfile=s.kafka_ssl_certfile,
        ssl_keyfile=s.kafka_ssl_keyfile, ssl_password=s.kafka_ssl_password,
        session_timeout_ms=s.kafka_session_timeout_ms, heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=s.kafka_max_poll_interval_ms, check_crcs=s.kafka_check_crcs,
        connect_timeout_s=s.kafka_connect_timeout_s,
    )


def dead_letter_sink(cfg: Config, state_dir: Path, source_url: str,
                     truncate_to: int | None) -> tuple[DeadLetterSink, Any]:
    """The local file, plus the configured topic when the events come from Kafka; and the Kafka producer it
    writes with (``None``: a file only), which the caller closes after the sink."""
    path = state_dir / "deadletter.jsonl"
    template = cfg.stream.dead_letter_topic
    if not source_url.startswith("kafka://") or not template:
        return DeadLetterSink(path, truncate_to=truncate_to), None
    from stream.producer import kafka_producer

    servers, topic, _ = parse_kafka_url(source_url)
    dead_topic = template.format(topic=topic)
    producer = kafka_producer(servers, kafka_settings(cfg), linger_ms=50)
    log.info("dead letters go to %s and to Kafka topic %s", path, dead_topic)
    return DeadLetterSink(path, topic=dead_topic, producer=producer, truncate_to=truncate_to), producer
