"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import redis_server


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One private redis-server for the whole session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The private Redis, flushed before each test (like arq's ``arq_redis``)."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushall()
    client.close()
    return redis_server_url


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory for one test."""
    path = tmp_path / "state"
    path.mkdir()
    return path
