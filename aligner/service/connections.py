"""The service's connections from its configuration: Redis (the configured server, or the embedded one under
the state dir) and the Kafka client settings."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aligner.config import Config
from aligner.publish.embedded_redis import EmbeddedRedis
from stream.kafka_settings import KafkaSettings


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
