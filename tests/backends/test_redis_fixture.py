"""The redis-server fixture's behaviour when the program is missing, and the server helper."""

from __future__ import annotations

import socket

import pytest
from _pytest.outcomes import Failed, Skipped

import tests.backends.conftest as backend_conftest
from async_batch_llm.testing.redis_server import INSTALL_HINT, LocalRedisServer


def test_a_missing_redis_server_skips_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend_conftest, "redis_server_path", lambda: None)
    monkeypatch.delenv("CI_REQUIRE_REDIS", raising=False)
    with pytest.raises(Skipped, match="apt-get install redis-server"):
        backend_conftest.require_redis_server()


def test_ci_require_redis_turns_the_skip_into_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_conftest, "redis_server_path", lambda: None)
    monkeypatch.setenv("CI_REQUIRE_REDIS", "1")
    with pytest.raises(Failed, match="CI_REQUIRE_REDIS=1"):
        backend_conftest.require_redis_server()


def test_the_helper_refuses_to_start_without_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("async_batch_llm.testing.redis_server.redis_server_path", lambda: None)
    with pytest.raises(RuntimeError, match="redis-server is not installed"):
        LocalRedisServer().start()
    assert "make install" in INSTALL_HINT


def test_the_server_listens_on_loopback_only_and_stops(redis_server: LocalRedisServer) -> None:
    assert redis_server.url.startswith("redis://127.0.0.1:")
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=1):
        pass
    redis_server.stop()
    assert not redis_server.running
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", redis_server.port), timeout=1),
    ):
        pass
