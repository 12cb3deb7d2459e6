"""The admission gate on a fake clock: pacing, FIFO order, reconciliation, headers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import pytest

from async_batch_llm._internal.admission import AdmissionGate, GateRegistry, Reservation
from async_batch_llm._internal.quota_types import EstimateTooLargeError, QuotaLimits, TokenEstimate
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked

WALL_NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def make_gate(
    clock: FakeClock,
    limits: QuotaLimits | Mapping[str, float | None] | None = None,
    *,
    burst_seconds: float = 1.0,
    margin: float = 0.0,
    scope: str = "s",
) -> AdmissionGate:
    return AdmissionGate(
        scope,
        limits if limits is not None else QuotaLimits(tokens_per_minute=60_000),
        clock,
        burst_seconds=burst_seconds,
        margin=margin,
        wall_clock=lambda: WALL_NOW,
    )


class Recorder:
    """Starts reservations as tasks and records when each is granted."""

    def __init__(self, gate: AdmissionGate, clock: FakeClock) -> None:
        self.gate = gate
        self.clock = clock
        self.granted: dict[str, float] = {}
        self.reservations: dict[str, Reservation] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, input_tokens: int, output_tokens: int = 0) -> asyncio.Task[None]:
        async def run() -> None:
            reservation = await self.gate.reserve(TokenEstimate(input_tokens, output_tokens))
            self.granted[name] = self.clock.time()
            self.reservations[name] = reservation

        task = asyncio.create_task(run())
        self.tasks[name] = task
        return task


def level(gate: AdmissionGate, dimension: str = "tokens") -> float:
    return gate.statistics().levels[dimension]


# --------------------------------------------------------------------------------------------
# Pacing and bursts
# --------------------------------------------------------------------------------------------


async def test_after_idle_one_burst_goes_through_then_exactly_the_refill_rate() -> None:
    clock = FakeClock()
    gate = make_gate(clock)  # 60,000 TPM = 1,000/s, burst 1 s = 1,000 tokens
    recorder = Recorder(gate, clock)
    for i in range(15):
        recorder.start(f"r{i}", 100)
    await wait_all_tasks_blocked()
    assert sorted(recorder.granted) == sorted(f"r{i}" for i in range(10))
    assert set(recorder.granted.values()) == {0.0}
    await clock.advance(0.5)
    assert [recorder.granted[f"r{i}"] for i in range(10, 15)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-9
    )
    # A long idle refills one burst only, never a whole minute.
    await clock.advance(30.0)
    for i in range(15, 30):
        recorder.start(f"r{i}", 100)
    await wait_all_tasks_blocked()
    assert sum(1 for name in recorder.granted if int(name[1:]) >= 15) == 10
    await clock.advance(0.3)
    assert len(recorder.granted) == 28
    assert recorder.granted["r27"] == pytest.approx(30.8, abs=1e-9)


async def test_requests_are_paced_with_a_burst_of_at_least_one() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=30))  # 0.5/s, capacity 1
    recorder = Recorder(gate, clock)
    for i in range(3):
        recorder.start(f"r{i}", 1)
    await clock.advance(4.0)
    assert recorder.granted == {"r0": 0.0, "r1": 2.0, "r2": 4.0}
    assert gate.statistics().capacities == {"requests": 1.0}


async def test_margin_is_a_reserve_each_admission_leaves_not_a_slower_rate() -> None:
    clock = FakeClock()
    gate = make_gate(
        clock, QuotaLimits(requests_per_minute=1_200, tokens_per_minute=60_000), margin=0.05
    )
    stats = gate.statistics()
    # Full buckets: 1,000 tokens (1 s at 1,000/s) and 20 requests; the token reserve is 5%.
    assert stats.capacities == {"requests": 20.0, "tokens": 1_000.0}
    recorder = Recorder(gate, clock)
    for i in range(700):
        recorder.start(f"r{i}", 100)
    await wait_all_tasks_blocked()
    # The tenth 100 would leave 0 < 50 tokens: it waits for the reserve to refill (0.05 s).
    assert len(recorder.granted) == 9
    assert level(gate) == pytest.approx(100.0)
    assert gate.statistics().levels["requests"] == pytest.approx(11.0)  # no reserve for requests
    await clock.advance(0.25)
    assert [recorder.granted[f"r{i}"] for i in range(9, 12)] == pytest.approx(
        [0.05, 0.15, 0.25], abs=1e-9
    )
    await clock.advance(59.75)
    # Then exactly the full limit: 1,000 - 50 + 60 s x 1,000 = 60,950 tokens by t = 60.
    assert len(recorder.granted) == 609
    assert level(gate) >= 50.0 - 1e-6


class ProviderBucket:
    """A provider's bucket of the gate's shape: charges the real usage when a call starts."""

    def __init__(self, clock: FakeClock, rate: float, capacity: float) -> None:
        self.clock = clock
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = clock.time()
        self.lowest = capacity

    def charge(self, amount: float) -> None:
        now = self.clock.time()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate) - amount
        self.updated = now
        self.lowest = min(self.lowest, self.level)


async def short_estimates_in_flight(margin: float) -> tuple[float, float]:
    """Two callers reserve 100 tokens, use 140 and report it 50 ms later; (lowest, end time)."""
    clock = FakeClock()
    gate = make_gate(clock, margin=margin)  # 1,000 tokens, 1,000/s
    provider = ProviderBucket(clock, 1_000.0, 1_000.0)

    async def caller() -> None:
        for _ in range(150):
            reservation = await gate.reserve(TokenEstimate(100))
            provider.charge(140)
            await clock.sleep(0.05)
            reservation.reconcile({"input_tokens": 140, "output_tokens": 0})

    tasks = [asyncio.create_task(caller()) for _ in range(2)]
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    return provider.lowest, clock.time()


async def test_a_short_estimate_in_flight_is_covered_by_the_reserve() -> None:
    # The other caller's call is in flight, 40 tokens short, when one is admitted: the 50-token
    # reserve keeps the provider's bucket from being overdrawn. Without it, it would be.
    lowest, took = await short_estimates_in_flight(margin=0.05)
    assert lowest >= -1e-6
    assert (await short_estimates_in_flight(margin=0.0))[0] < -1.0
    # Paced at the full rate all the same: 300 calls of 140 real tokens, less the first
    # second's burst, take 41 s of refill (plus the last call's 50 ms).
    assert took == pytest.approx((300 * 140 - 1_000) / 1_000 + 0.05, abs=0.1)


async def test_try_reserve_takes_what_fits_now_and_never_jumps_the_line() -> None:
    clock = FakeClock()
    gate = make_gate(clock)  # 1,000 tokens, 1,000/s
    first = gate.try_reserve(TokenEstimate(600))
    assert first is not None
    assert first.estimate == TokenEstimate(600)
    assert first.waited == 0.0
    assert gate.try_reserve(TokenEstimate(500)) is None  # 400 left: nothing is taken
    assert level(gate) == pytest.approx(400.0)
    recorder = Recorder(gate, clock)
    recorder.start("waiting", 500)
    await wait_all_tasks_blocked()
    assert gate.waiting == 1
    # 10 tokens would fit, but the waiting caller comes first.
    assert gate.try_reserve(TokenEstimate(10)) is None
    with pytest.raises(EstimateTooLargeError):
        gate.try_reserve(TokenEstimate(70_000))  # above the whole limit: fails even in line
    await clock.advance(0.1)
    assert recorder.granted == {"waiting": pytest.approx(0.1)}
    await clock.advance(0.25)
    assert gate.try_reserve(TokenEstimate(10)) is not None
    assert gate.statistics().reservations == 3


async def test_used_last_minute_is_counted_per_clock_second() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    await clock.advance(0.5)
    (await gate.reserve(TokenEstimate(100))).reconcile(None)
    await clock.advance(59.25)  # t = 59.75
    (await gate.reserve(TokenEstimate(50))).reconcile({"input_tokens": 40, "output_tokens": 0})
    assert gate.statistics().used_last_minute["tokens"] == 140.0
    # The first grant's second (0 to 1) began a minute ago at t = 60: it leaves the count
    # then, half a second before a minute has passed since the grant itself.
    await clock.advance(0.25)
    stats = gate.statistics()
    assert stats.used_last_minute == {
        "requests": 1.0,
        "tokens": 40.0,
        "input_tokens": 40.0,
        "output_tokens": 0.0,
    }
    await clock.advance(60.0)
    assert gate.statistics().used_last_minute["tokens"] == 0.0


async def test_one_reservation_above_the_burst_waits_for_a_full_bucket_then_owes_the_rest() -> None:
    clock = FakeClock()
    gate = make_gate(clock)  # capacity 1,000 tokens
    recorder = Recorder(gate, clock)
    recorder.start("drain", 1000)
    recorder.start("big", 5000)
    recorder.start("after", 100)
    await clock.advance(0.999)
    assert recorder.granted == {"drain": 0.0}
    await clock.advance(0.001)
    assert recorder.granted["big"] == pytest.approx(1.0)
    assert level(gate) == pytest.approx(-4000.0)
    await clock.advance(5.0)
    # The 4,000-token debt and the 100 wanted take 4.1 s of refill.
    assert recorder.granted["after"] == pytest.approx(5.1)


# --------------------------------------------------------------------------------------------
# FIFO order and cancellation
# --------------------------------------------------------------------------------------------


async def test_a_small_reservation_never_overtakes_a_big_one_at_the_head() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    recorder = Recorder(gate, clock)
    recorder.start("drain", 1000)
    recorder.start("big", 800)
    recorder.start("small", 100)
    await clock.advance(0.5)
    assert set(recorder.granted) == {"drain"}
    assert gate.waiting == 2
    await clock.advance(0.3)
    assert recorder.granted["big"] == pytest.approx(0.8)
    assert "small" not in recorder.granted
    await clock.advance(0.1)
    assert recorder.granted["small"] == pytest.approx(0.9)
    assert gate.waiting == 0


async def test_a_newcomer_queues_behind_waiters_even_if_it_would_fit() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    recorder = Recorder(gate, clock)
    recorder.start("drain", 900)
    recorder.start("big", 500)  # needs 400 more: 0.4 s
    await wait_all_tasks_blocked()
    recorder.start("tiny", 50)  # 100 available, but "big" is first
    await clock.advance(0.399)
    assert set(recorder.granted) == {"drain"}
    await clock.advance(0.001)
    assert recorder.granted["big"] == pytest.approx(0.4)
    await clock.advance(0.05)
    assert recorder.granted["tiny"] == pytest.approx(0.45)


async def test_cancelling_the_head_waiter_lets_the_next_one_proceed() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    recorder = Recorder(gate, clock)
    recorder.start("drain", 1000)
    big = recorder.start("big", 900)
    recorder.start("small", 100)
    await clock.advance(0.05)
    big.cancel()
    await wait_all_tasks_blocked()
    assert big.cancelled()
    assert gate.waiting == 1
    await clock.advance(0.05)
    assert recorder.granted["small"] == pytest.approx(0.1)
    # Nothing was taken for the cancelled waiter.
    assert gate.statistics().reservations == 2
    assert level(gate) == pytest.approx(0.0, abs=1e-9)


async def test_cancelling_a_waiter_in_the_middle_keeps_the_order_of_the_rest() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    recorder = Recorder(gate, clock)
    recorder.start("drain", 1000)
    recorder.start("a", 100)
    middle = recorder.start("b", 500)
    recorder.start("c", 100)
    await wait_all_tasks_blocked()
    middle.cancel()
    await clock.advance(0.2)
    assert recorder.granted["a"] == pytest.approx(0.1)
    assert recorder.granted["c"] == pytest.approx(0.2)
    assert "b" not in recorder.granted


async def test_cancelling_an_unused_reservation_refunds_everything_and_wakes_the_head() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=60, tokens_per_minute=60_000))
    first = await gate.reserve(TokenEstimate(600, 400))
    assert level(gate, "requests") == 0.0
    recorder = Recorder(gate, clock)
    recorder.start("next", 1000)
    await clock.advance(0.25)
    assert "next" not in recorder.granted
    first.cancel()
    await wait_all_tasks_blocked()
    assert recorder.granted == {"next": 0.25}
    assert first.settled


# --------------------------------------------------------------------------------------------
# Reconciliation
# --------------------------------------------------------------------------------------------


async def test_lower_usage_is_refunded_and_wakes_the_waiter_at_once() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(700, 300))
    recorder = Recorder(gate, clock)
    recorder.start("waiter", 600)
    await clock.advance(0.125)
    assert "waiter" not in recorder.granted
    reservation.reconcile({"input_tokens": 300, "output_tokens": 100, "total_tokens": 400})
    await wait_all_tasks_blocked()
    # 125 refilled + 600 refunded = 725 >= 600, granted without waiting for the refill.
    assert recorder.granted == {"waiter": 0.125}
    assert level(gate) == pytest.approx(125.0)


async def test_higher_usage_leaves_a_debt_that_later_reservations_wait_out() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(400, 100))
    reservation.reconcile({"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500})
    assert level(gate) == pytest.approx(-500.0)
    recorder = Recorder(gate, clock)
    recorder.start("next", 100)
    await clock.advance(0.599)
    assert recorder.granted == {}
    await clock.advance(0.001)
    assert recorder.granted["next"] == pytest.approx(0.6)


@pytest.mark.parametrize("usage", [None, {}], ids=["none", "empty"])
async def test_unknown_usage_keeps_the_estimate(usage: dict[str, int] | None) -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(300, 200))
    reservation.reconcile(usage)
    assert reservation.settled
    stats = gate.statistics()
    assert stats.levels["tokens"] == 500.0
    assert stats.used_last_minute["tokens"] == 500.0


async def test_partial_usage_reconciles_only_the_figures_it_states() -> None:
    clock = FakeClock()
    gate = make_gate(
        clock,
        QuotaLimits(
            tokens_per_minute=60_000, input_tokens_per_minute=60_000, output_tokens_per_minute=6000
        ),
    )
    reservation = await gate.reserve(TokenEstimate(300, 50))
    reservation.reconcile({"input_tokens": 100})
    levels = gate.statistics().levels
    assert levels["input_tokens"] == pytest.approx(900.0)  # refunded 200
    assert levels["output_tokens"] == pytest.approx(50.0)  # 100 capacity, estimate kept
    assert levels["tokens"] == pytest.approx(650.0)  # no total, no output: estimate kept


async def test_total_falls_back_to_input_plus_output() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(300, 200))
    reservation.reconcile({"input_tokens": 100, "output_tokens": 50})
    assert level(gate) == pytest.approx(850.0)


async def test_settling_twice_is_a_no_op() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(500))
    reservation.reconcile({"total_tokens": 100})
    reservation.reconcile({"total_tokens": 100})
    reservation.cancel()
    assert level(gate) == pytest.approx(900.0)
    other = await gate.reserve(TokenEstimate(400))
    other.cancel()
    other.cancel()
    other.reconcile({"total_tokens": 0})
    assert level(gate) == pytest.approx(900.0)


async def test_used_last_minute_counts_corrected_usage_and_forgets_after_a_minute() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=600))
    first = await gate.reserve(TokenEstimate(300, 200))
    first.reconcile({"input_tokens": 250, "output_tokens": 150, "total_tokens": 400})
    await clock.advance(30.0)
    second = await gate.reserve(TokenEstimate(10, 10))
    second.cancel()
    used = gate.statistics().used_last_minute
    assert used == {"requests": 1.0, "tokens": 400.0, "input_tokens": 250.0, "output_tokens": 150.0}
    await clock.advance(30.0)
    assert gate.statistics().used_last_minute["tokens"] == 0.0


# --------------------------------------------------------------------------------------------
# Estimates that can never fit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "estimate", "dimension", "amount", "limit"),
    [
        (QuotaLimits(tokens_per_minute=60_000), TokenEstimate(60_000, 1), "tokens", 60_001, 60_000),
        (
            QuotaLimits(input_tokens_per_minute=1000),
            TokenEstimate(1001),
            "input_tokens",
            1001,
            1000,
        ),
        (
            QuotaLimits(output_tokens_per_minute=500),
            TokenEstimate(1, 501),
            "output_tokens",
            501,
            500,
        ),
    ],
    ids=["total", "input", "output"],
)
async def test_an_estimate_above_a_whole_minute_fails_at_once(
    limits: QuotaLimits, estimate: TokenEstimate, dimension: str, amount: int, limit: int
) -> None:
    clock = FakeClock()
    gate = make_gate(clock, limits, scope="openai:gpt-x")
    with pytest.raises(EstimateTooLargeError) as excinfo:
        await gate.reserve(estimate)
    error = excinfo.value
    assert isinstance(error, ValueError)
    assert (error.scope, error.dimension, error.amount, error.limit) == (
        "openai:gpt-x",
        dimension,
        amount,
        limit,
    )
    assert str(error) == (
        f"estimated {dimension} of one attempt ({amount}) exceed the whole per-minute "
        f"{dimension} limit ({limit}) of quota scope 'openai:gpt-x'; the attempt can never "
        "be admitted"
    )
    assert gate.waiting == 0
    assert gate.statistics().reservations == 0


async def test_an_estimate_too_large_fails_at_once_even_behind_an_empty_bucket() -> None:
    # The request bucket (checked first) is empty and a caller waits: the estimate above the
    # whole token limit still fails at once, neither waiting for the request nor in line.
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=60, tokens_per_minute=1_000))
    await gate.reserve(TokenEstimate(1))
    with pytest.raises(EstimateTooLargeError):
        await gate.reserve(TokenEstimate(5_000))
    assert gate.waiting == 0
    queued = asyncio.create_task(gate.reserve(TokenEstimate(1)))
    await wait_all_tasks_blocked()
    with pytest.raises(EstimateTooLargeError):
        await gate.reserve(TokenEstimate(5_000))
    assert gate.waiting == 1  # only the queued caller
    await clock.advance(1.0)
    assert (await queued).granted_at == pytest.approx(1.0)


async def test_an_estimate_of_exactly_one_minute_is_admitted() -> None:
    clock = FakeClock()
    gate = make_gate(clock)
    reservation = await gate.reserve(TokenEstimate(60_000))
    assert reservation.granted_at == 0.0
    assert level(gate) == pytest.approx(-59_000.0)


async def test_a_learned_limit_fails_a_waiter_whose_estimate_no_longer_fits() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=60))
    await gate.reserve(TokenEstimate(1))
    waiter = asyncio.create_task(gate.reserve(TokenEstimate(5000)))
    await clock.advance(0.5)
    gate.observe_headers({"x-ratelimit-limit-tokens": "4000"})
    await wait_all_tasks_blocked()
    with pytest.raises(EstimateTooLargeError) as excinfo:
        await waiter
    assert (excinfo.value.dimension, excinfo.value.amount, excinfo.value.limit) == (
        "tokens",
        5000,
        4000,
    )
    assert gate.waiting == 0


# --------------------------------------------------------------------------------------------
# Scopes
# --------------------------------------------------------------------------------------------


async def test_each_scope_has_its_own_gate_and_buckets() -> None:
    clock = FakeClock()
    registry = GateRegistry(
        QuotaLimits(tokens_per_minute=60_000),
        clock,
        quotas={"small": QuotaLimits(requests_per_minute=6)},
        margin=0.0,
    )
    a, b, small = registry.gate("a"), registry.gate("b"), registry.gate("small")
    assert registry.gate("a") is a
    await a.reserve(TokenEstimate(1000))
    assert level(a) == 0.0
    assert level(b) == 1000.0
    assert small.statistics().limits == {"requests": 6.0}
    assert registry.limits_for("a") == {"tokens": 60_000.0}
    assert set(registry.statistics()) == {"a", "b", "small"}


def test_registry_from_config_uses_the_max_fields_quotas_and_burst() -> None:
    from async_batch_llm.core.config import ProcessorConfig

    config = ProcessorConfig(
        max_requests_per_minute=120.0,
        max_tokens_per_minute=90_000,
        max_output_tokens_per_minute=9_000,
        quota_burst_seconds=2.0,
        quotas={"x": QuotaLimits(tokens_per_minute=1000)},
    )
    registry = GateRegistry.from_config(config, FakeClock())
    assert registry.limits_for("default") == {
        "requests": 120.0,
        "tokens": 90_000.0,
        "output_tokens": 9_000.0,
    }
    assert registry.limits_for("x") == {"tokens": 1000.0}
    # Burst 2 s: 2 s of 2 requests/s.
    assert registry.gate("default").statistics().capacities["requests"] == 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"burst_seconds": 0.0}, "burst_seconds must be a finite number > 0, got 0.0"),
        ({"burst_seconds": math.inf}, "burst_seconds must be a finite number > 0, got inf"),
        ({"margin": 1.0}, "margin must be >= 0 and < 1, got 1.0"),
        ({"margin": -0.1}, "margin must be >= 0 and < 1, got -0.1"),
    ],
)
def test_gate_rejects_bad_burst_and_margin(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdmissionGate("s", {}, FakeClock(), **kwargs)


def test_gate_rejects_unknown_dimensions_and_bad_limits() -> None:
    with pytest.raises(ValueError, match="unknown quota dimension 'tokens_per_day'"):
        AdmissionGate("s", {"tokens_per_day": 5.0}, FakeClock())
    with pytest.raises(ValueError, match="the tokens limit must be a finite number > 0"):
        AdmissionGate("s", {"tokens": 0.0}, FakeClock())


# --------------------------------------------------------------------------------------------
# Learning from headers
# --------------------------------------------------------------------------------------------

OPENAI_HEADERS = {
    "X-RateLimit-Limit-Requests": "60",
    "X-RateLimit-Limit-Tokens": "60000",
    "X-RateLimit-Remaining-Requests": "59",
    "X-RateLimit-Remaining-Tokens": "59500",
    "X-RateLimit-Reset-Requests": "1s",
    "X-RateLimit-Reset-Tokens": "500ms",
    "content-type": "application/json",
}


async def test_an_undeclared_gate_admits_everything_until_headers_teach_it() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    for _ in range(100):
        await gate.reserve(TokenEstimate(10_000))
    assert gate.statistics().limits == {}
    assert "unlimited" in repr(gate)
    gate.observe_headers(OPENAI_HEADERS)
    stats = gate.statistics()
    assert stats.limits == {"requests": 60.0, "tokens": 60_000.0}
    assert stats.limit_sources == {"requests": "learned", "tokens": "learned"}
    # 59 requests / 59,500 tokens left: looser than the new one-second buckets, kept full.
    assert stats.levels == {"requests": 1.0, "tokens": 1000.0}
    recorder = Recorder(gate, clock)
    for i in range(3):
        recorder.start(f"r{i}", 10)
    await clock.advance(2.0)
    assert recorder.granted == {"r0": 0.0, "r1": 1.0, "r2": 2.0}


async def test_anthropic_headers_teach_request_input_and_output_limits() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    gate.observe_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21Z",
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": "300",
            "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:14:20Z",
            "anthropic-ratelimit-output-tokens-limit": "6000",
            "anthropic-ratelimit-output-tokens-remaining": "6000",
            "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:20Z",
        }
    )
    stats = gate.statistics()
    assert stats.limits == {"requests": 50.0, "input_tokens": 30_000.0, "output_tokens": 6000.0}
    assert set(stats.limit_sources.values()) == {"learned"}
    # Input: 300 left, 29,700 back in 60 s = 495/s, slower than the bucket's 500/s, so the
    # level drops by the 5/s difference over the 60 s: 300 - 300 = 0.
    assert stats.levels["input_tokens"] == pytest.approx(0.0, abs=1e-9)
    assert stats.levels["output_tokens"] == pytest.approx(100.0)
    assert stats.levels["requests"] == pytest.approx(1.0)


async def test_a_slow_reset_turns_the_snapshot_into_a_debt() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    # 0 of 60,000 left, full again in 6 minutes: 166.7/s instead of the bucket's 1,000/s.
    gate.observe_headers(
        {
            "x-ratelimit-limit-tokens": "60000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert level(gate) == pytest.approx(-300_000.0)


async def test_a_stricter_snapshot_lowers_the_bucket_and_a_looser_one_never_raises_it() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    gate.observe_headers({"x-ratelimit-limit-tokens": "60000"})
    assert level(gate) == 1000.0
    gate.observe_headers({"x-ratelimit-remaining-tokens": "100"})
    assert level(gate) == 100.0
    gate.observe_headers({"x-ratelimit-remaining-tokens": "59000"})
    assert level(gate) == 100.0
    recorder = Recorder(gate, clock)
    recorder.start("r", 500)
    await clock.advance(0.4)
    assert recorder.granted == {"r": pytest.approx(0.4)}


async def test_a_changed_learned_limit_resizes_the_bucket() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    gate.observe_headers({"x-ratelimit-limit-requests": "600"})
    assert gate.statistics().capacities["requests"] == 10.0
    gate.observe_headers({"x-ratelimit-limit-requests": "120"})
    stats = gate.statistics()
    assert stats.limits["requests"] == 120.0
    assert stats.capacities["requests"] == 2.0
    assert stats.levels["requests"] == 2.0


async def test_declared_limits_win_but_a_stricter_remaining_still_lowers_the_level() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(tokens_per_minute=60_000))
    gate.observe_headers({"x-ratelimit-limit-tokens": "30000", "x-ratelimit-limit-requests": "100"})
    stats = gate.statistics()
    assert stats.limits == {"tokens": 60_000.0, "requests": 100.0}
    assert stats.limit_sources == {"tokens": "declared", "requests": "learned"}
    assert stats.capacities["tokens"] == 1000.0
    gate.observe_headers(
        {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "200"}
    )
    assert level(gate) == 200.0
    assert gate.limit("tokens") == 60_000.0


async def test_unparsable_headers_are_ignored() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits())
    gate.observe_headers(
        {
            "x-ratelimit-limit-tokens": "lots",
            "x-ratelimit-remaining-requests": "-3",
            "anthropic-ratelimit-requests-limit": "",
        }
    )
    assert gate.statistics().limits == {}


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------


async def test_statistics_and_repr_show_live_state() -> None:
    clock = FakeClock()
    gate = make_gate(clock, QuotaLimits(requests_per_minute=60, tokens_per_minute=60_000))
    assert repr(gate) == (
        "AdmissionGate(scope='s', requests=60/min, tokens=60000/min, waiting=0, reservations=0)"
    )
    await gate.reserve(TokenEstimate(400, 100))
    waiter = asyncio.create_task(gate.reserve(TokenEstimate(100)))
    await clock.advance(0.5)
    assert repr(gate) == (
        "AdmissionGate(scope='s', requests=0.5/1 (60/min declared), "
        "tokens=1000/1000 (60000/min declared), waiting=1, reservations=1)"
    )
    stats = gate.statistics()
    assert stats.waiting == 1
    assert stats.reservations == 1
    await clock.advance(0.5)
    reservation = await waiter
    assert reservation.waited == 1.0
    assert reservation.scope == "s"
    assert gate.statistics().total_wait_seconds == 1.0
    assert "open" in repr(reservation)


def test_repr_outside_the_event_loop_shows_the_last_known_levels() -> None:
    from async_batch_llm._internal.clock import LoopClock

    gate = AdmissionGate("s", QuotaLimits(requests_per_minute=60), LoopClock(), margin=0.0)

    async def reserve_one() -> None:
        await gate.reserve(TokenEstimate(1))

    asyncio.run(reserve_one())
    assert repr(gate) == (
        "AdmissionGate(scope='s', requests=0/1 (60/min declared), waiting=0, reservations=1)"
    )
