"""Shared fixtures: a real redis-server on a free loopback port, and the benchmark data beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aligner.embedded_redis import EmbeddedRedis
from aligner.runtime import release_freed_tensors

release_freed_tensors()  # as every `dynalign` process does: long training loops otherwise grow the heap

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "aligner" / "sample"


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
