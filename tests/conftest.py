"""Shared fixtures: a real redis-server on a free loopback port, and the benchmark data beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aligner.publish.embedded_redis import EmbeddedRedis
from aligner.runtime import release_freed_tensors

release_freed_tensors()  # as every `dynalign` process does: long training loops otherwise grow the heap

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "aligner" / "sample"


KAFKA_MODULES = ("test_replay_kafka", "test_service_guarantees", "test_service_kafka", "test_kafka_source",
                 "test_producer")  # they start brokers of their own too, not only through the fixtures
KAFKA_FIXTURES = {"broker"}
REDIS_FIXTURES = {"redis_server", "redis_url", "own_redis", "first_run"}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection looks at the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark integration tests by what they start: ``-m "not kafka and not redis"`` is the fast unit run
    (``make test-unit``); ``make test`` runs everything."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = getattr(item, "module", None)
        if fixtures & KAFKA_FIXTURES or (module is not None and module.__name__.rsplit(".", 1)[-1] in KAFKA_MODULES):
            item.add_marker(pytest.mark.kafka)
        if fixtures & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on the session's server for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
