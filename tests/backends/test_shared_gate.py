"""SharedAdmissionGate and SharedCooldown on a FakeClock, over an in-process backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm._internal.shared_quota import SharedAdmissionGate, SharedCooldown
from async_batch_llm.backends import InMemoryQuotaBackend
from async_batch_llm.quota import EstimateTooLargeError, TokenEstimate
from async_batch_llm.strategies import FixedDelayStrategy
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import drive


def make_gate(
    clock: FakeClock, **limits: float
) -> tuple[SharedAdmissionGate, InMemoryQuotaBackend]:
    backend = InMemoryQuotaBackend(clock=clock.time)
    return SharedAdmissionGate("s", limits, clock, backend), backend


async def test_the_gate_admits_in_fifo_order_and_paces_through_the_backend(
    fake_clock: FakeClock,
) -> None:
    gate, _ = make_gate(fake_clock, requests=60)  # one a second, a bucket of one
    order: list[tuple[int, float]] = []

    async def one(index: int) -> None:
        reservation = await gate.reserve(TokenEstimate(0, 0))
        order.append((index, fake_clock.time()))
        reservation.reconcile(None)

    async def all_of_them() -> None:
        await asyncio.gather(*(one(i) for i in range(4)))

    await drive(fake_clock, all_of_them())
    assert [index for index, _ in order] == [0, 1, 2, 3]
    assert [at for _, at in order] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-3)
    assert gate.statistics().reservations == 4
    assert gate.statistics().levels == {}


async def test_no_synchronous_grant_but_too_large_fails_at_once(fake_clock: FakeClock) -> None:
    gate, _ = make_gate(fake_clock, tokens=600)
    assert gate.try_reserve_tokens(1, 1) is None
    with pytest.raises(EstimateTooLargeError):
        gate.try_reserve_tokens(700, 0)


async def test_reconcile_sends_the_refund_to_the_backend(fake_clock: FakeClock) -> None:
    gate, backend = make_gate(fake_clock, tokens=600)  # 10 a second, burst 10, reserve 0.5
    reservation = await gate.reserve(TokenEstimate(8, 1))
    assert await backend.acquire("s", "probe", gate._specs(gate._amounts(2, 0))) > 0.0
    reservation.reconcile({"input_tokens": 2, "output_tokens": 1, "total_tokens": 3})
    reservation.reconcile({"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})  # no-op
    await gate.drain()
    assert await backend.acquire("s", "probe", gate._specs(gate._amounts(6, 0))) == 0.0
    assert await backend.acquire("s", "more", gate._specs(gate._amounts(1, 0))) > 0.0


async def test_cancel_gives_everything_back(fake_clock: FakeClock) -> None:
    gate, backend = make_gate(fake_clock, tokens=600)
    reservation = await gate.reserve(TokenEstimate(9, 0))
    reservation.cancel()
    await gate.drain()
    assert await backend.acquire("s", "probe", gate._specs(gate._amounts(9, 0))) == 0.0


async def test_a_cancelled_waiter_takes_nothing(fake_clock: FakeClock) -> None:
    gate, backend = make_gate(fake_clock, tokens=600)
    first = await gate.reserve(TokenEstimate(9, 0))
    waiter = asyncio.ensure_future(gate.reserve(TokenEstimate(9, 0)))
    await fake_clock.advance(0.1)
    assert gate.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    first.cancel()
    await gate.drain()
    assert await backend.acquire("s", "probe", gate._specs(gate._amounts(9, 0))) == 0.0


async def test_shared_cooldown_joins_a_running_one_and_counts_in_the_backend(
    fake_clock: FakeClock,
) -> None:
    backend = InMemoryQuotaBackend(clock=fake_clock.time)
    durations: list[float] = []

    async def emit(event: Any, data: dict[str, Any]) -> None:
        if "consecutive" in data:  # COOLDOWN_STARTED
            durations.append(data["duration"])

    strategy = FixedDelayStrategy(cooldown=5.0)
    one = SharedCooldown(strategy, fake_clock, emit, backend)
    other = SharedCooldown(strategy, fake_clock, emit, backend)
    first = asyncio.ensure_future(one.on_rate_limit(0, retry_after=None))
    await fake_clock.advance(2.0)
    assert one.paused
    second = asyncio.ensure_future(other.on_rate_limit(0, retry_after=1.0))
    await fake_clock.advance(2.9)
    assert other.paused  # joined the running cooldown: 3 s left, not its own 1 s floor
    await fake_clock.advance(0.2)
    await asyncio.gather(first, second)
    assert not one.paused
    assert not other.paused
    assert durations == [5.0, pytest.approx(3.0)]
    assert one.consecutive == 1
    assert other.consecutive == 1
    # The next rate limit anywhere counts on; a success anywhere resets the count.
    turn = await backend.begin_cooldown(0.0)
    assert turn.consecutive == 2
    one.reset_consecutive()
    await one.drain()
    await fake_clock.advance(1.0)
    assert (await backend.begin_cooldown(1.0)).consecutive == 1
