"""The QuotaBackend semantics, checked on both backends: in process and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from async_batch_llm.backends import (
    BucketSpec,
    InMemoryQuotaBackend,
    QuotaBackend,
    RedisQuotaBackend,
)
from async_batch_llm.testing.clock import FakeClock
from async_batch_llm.testing.redis_server import LocalRedisServer
from tests.backends.conftest import require_redis_server

# 10 units a second, a bucket of 20 with a reserve of 2.
RATE, CAPACITY, RESERVE = 10.0, 20.0, 2.0


def tokens(amount: float) -> list[BucketSpec]:
    return [BucketSpec("tokens", amount, RATE, CAPACITY, RESERVE)]


@pytest.fixture(scope="module")
def module_redis() -> Iterator[LocalRedisServer]:
    require_redis_server()
    with LocalRedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[QuotaBackend]:
    if request.param == "memory":
        yield InMemoryQuotaBackend()
        return
    server: LocalRedisServer = request.getfixturevalue("module_redis")
    redis = RedisQuotaBackend(server.url, namespace=f"t-{request.node.name}")
    await redis.ping()
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_both_backends_satisfy_the_protocol(backend: QuotaBackend) -> None:
    assert isinstance(backend, QuotaBackend)


async def test_acquire_takes_what_fits_and_answers_the_wait_otherwise(
    backend: QuotaBackend,
) -> None:
    assert await backend.acquire("s", "r1", tokens(15)) == 0.0
    # 5 left; 6 more plus the reserve of 2 need 3 more units: about 0.3 s.
    wait = await backend.acquire("s", "r2", tokens(6))
    assert 0.2 < wait <= 0.31
    await asyncio.sleep(wait + 0.02)
    assert await backend.acquire("s", "r2", tokens(6)) == 0.0


async def test_acquire_is_idempotent_per_reservation_id(backend: QuotaBackend) -> None:
    assert await backend.acquire("s", "same", tokens(15)) == 0.0
    assert await backend.acquire("s", "same", tokens(15)) == 0.0  # a retry: nothing taken
    assert await backend.acquire("s", "other", tokens(3)) == 0.0  # 5 left: 3 + 2 fit


async def test_every_bucket_or_none_is_taken(backend: QuotaBackend) -> None:
    requests = BucketSpec("requests", 1, 1.0, 1.0)
    assert await backend.acquire("s", "a", [requests, *tokens(1)]) == 0.0
    # The request bucket is empty: nothing is taken from the token bucket either.
    assert await backend.acquire("s", "b", [requests, *tokens(17)]) > 0.5
    assert await backend.acquire("s", "c", tokens(17)) == 0.0


async def test_settle_applies_a_refund_once(backend: QuotaBackend) -> None:
    assert await backend.acquire("s", "r", tokens(18)) == 0.0
    assert await backend.acquire("s", "x", tokens(10)) > 0.5
    assert await backend.settle("s", "r", [BucketSpec("tokens", -10, RATE, CAPACITY)]) is True
    assert await backend.settle("s", "r", [BucketSpec("tokens", -10, RATE, CAPACITY)]) is False
    assert await backend.acquire("s", "x", tokens(10)) == 0.0
    assert await backend.acquire("s", "y", tokens(3)) > 0.0  # the second refund did not apply


async def test_a_debt_delays_later_reservations(backend: QuotaBackend) -> None:
    assert await backend.acquire("s", "r", tokens(1)) == 0.0
    assert await backend.settle("s", "r", [BucketSpec("tokens", 29, RATE, CAPACITY)]) is True
    # Level about -10: 1 + reserve needs about 13 units of refill.
    wait = await backend.acquire("s", "x", tokens(1))
    assert 1.1 < wait <= 1.31


async def test_settling_an_unknown_reservation_changes_nothing(backend: QuotaBackend) -> None:
    assert await backend.settle("s", "never", [BucketSpec("tokens", 100, RATE, CAPACITY)]) is False
    assert await backend.acquire("s", "x", tokens(18)) == 0.0


async def test_scopes_are_separate_whatever_their_names(backend: QuotaBackend) -> None:
    scopes = ["a:b", "a%3Ab", "a b", 'it\'s "quoted"', "ünïcödé:模型", "a:r:b", "*", ""]
    for scope in scopes:
        assert await backend.acquire(scope, "r", tokens(18)) == 0.0, scope
    for scope in scopes:
        assert await backend.acquire(scope, "again", tokens(18)) > 0.0, scope


async def test_cooldown_is_started_once_and_joined(backend: QuotaBackend) -> None:
    first = await backend.begin_cooldown(0.5)
    assert first.leader
    assert first.consecutive == 1
    assert 0.45 < first.remaining <= 0.5
    second = await backend.begin_cooldown(5.0)
    assert not second.leader
    assert second.consecutive == 1
    assert second.remaining <= 0.5
    assert 1.9 < await backend.extend_cooldown(2.0) <= 2.0
    assert await backend.extend_cooldown(0.1) > 1.5  # never shortened
    # Admission waits the cooldown out.
    assert 1.5 < await backend.acquire("s", "r", tokens(1)) <= 2.0


async def test_consecutive_rate_limits_count_until_reset(backend: QuotaBackend) -> None:
    assert (await backend.begin_cooldown(0.05)).consecutive == 1
    await asyncio.sleep(0.1)
    assert (await backend.begin_cooldown(0.05)).consecutive == 2
    await backend.reset_consecutive()
    await asyncio.sleep(0.1)
    turn = await backend.begin_cooldown(0.05)
    assert turn.leader
    assert turn.consecutive == 1


async def test_unsettled_reservations_expire() -> None:
    clock = FakeClock()
    memory = InMemoryQuotaBackend(clock=clock.time, reservation_ttl=10.0)
    assert await memory.acquire("s", "r", tokens(1)) == 0.0
    await clock.advance(10.0)
    assert await memory.settle("s", "r", tokens(-1)) is False


async def test_unsettled_redis_reservations_expire(module_redis: LocalRedisServer) -> None:
    backend = RedisQuotaBackend(module_redis.url, namespace="expiry", reservation_ttl=0.2)
    try:
        assert await backend.acquire("s", "r", tokens(1)) == 0.0
        assert await backend.acquire("s", "kept", tokens(1)) == 0.0
        assert await backend.settle("s", "kept", tokens(-1)) is True
        await asyncio.sleep(0.4)
        assert await backend.settle("s", "r", tokens(-1)) is False
        keys = await backend._redis().keys("expiry:r:*")
        assert keys == []
    finally:
        await backend.aclose()


async def test_every_redis_key_is_under_the_namespace(module_redis: LocalRedisServer) -> None:
    backend = RedisQuotaBackend(module_redis.url, namespace="my app")
    try:
        await backend.acquire("we:ird 'scope'", "r", tokens(1))
        await backend.begin_cooldown(0.01)
        keys = [str(key) for key in await backend._redis().keys("*")]  # decoded responses
        mine = sorted(key for key in keys if key.startswith("my%20app:"))
        assert mine == [
            "my%20app:cooldown",
            "my%20app:q:we%3Aird%20%27scope%27",
            "my%20app:r:we%3Aird%20%27scope%27:r",
        ]
    finally:
        await backend.aclose()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="reservation_ttl"):
        InMemoryQuotaBackend(reservation_ttl=0)
    with pytest.raises(ValueError, match="url must start with"):
        RedisQuotaBackend("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="namespace"):
        RedisQuotaBackend("redis://127.0.0.1:6379", namespace="")
    with pytest.raises(ValueError, match="reconnect_timeout"):
        RedisQuotaBackend("redis://127.0.0.1:6379", reconnect_timeout=float("nan"))
    with pytest.raises(TypeError, match="url must be a str"):
        RedisQuotaBackend(6379)  # type: ignore[arg-type]
