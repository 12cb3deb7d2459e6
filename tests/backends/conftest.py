"""Fixtures for the quota backend tests: a real ``redis-server`` on a random loopback port.

Without the program installed these tests skip, saying how to install it; with
``CI_REQUIRE_REDIS=1`` (set by ``.ci/run``) that skip is a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from async_batch_llm.testing.redis_server import INSTALL_HINT, LocalRedisServer, redis_server_path


def require_redis_server() -> None:
    """Skip (or fail, under ``CI_REQUIRE_REDIS=1``) when ``redis-server`` is missing."""
    if redis_server_path() is not None:
        return
    if os.environ.get("CI_REQUIRE_REDIS") == "1":
        pytest.fail(f"CI_REQUIRE_REDIS=1 but {INSTALL_HINT}")
    pytest.skip(INSTALL_HINT)


@pytest.fixture
def redis_server() -> Iterator[LocalRedisServer]:
    """A fresh ``redis-server`` (no persistence) on 127.0.0.1, killed after the test."""
    require_redis_server()
    with LocalRedisServer() as server:
        yield server
