"""Rate-limit coordination (§4.8): shared cooldown, backoff growth, slow start, Retry-After and
the proactive request limiter. Everything runs on a FakeClock, so times are exact."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from async_batch_llm import (
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    GeminiErrorClassifier,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RateLimitStrategy,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    Call,
    EventRecorder,
    RateLimitError,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)

E = ProcessingEvent


def starts(strategy: ScriptedStrategy) -> dict[str, list[float]]:
    """Call start times per prompt."""
    times: dict[str, list[float]] = {}
    for call in strategy.calls:
        times.setdefault(call.prompt, []).append(call.at)
    return times


class Recording(RateLimitStrategy):
    """Fixed cooldown; slow start for ``ramp`` items with ``delay`` each; records every query."""

    def __init__(self, cooldown: float = 4.0, ramp: int = 0, delay: float = 0.0) -> None:
        self.cooldown = cooldown
        self.ramp = ramp
        self.delay = delay
        self.cooldown_calls: list[tuple[int, int]] = []
        self.slow_start_calls: list[int] = []

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        self.cooldown_calls.append((worker_id, consecutive_limit_count))
        return self.cooldown

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        self.slow_start_calls.append(items_since_resume)
        return (True, self.delay) if items_since_resume < self.ramp else (False, 0.0)


# --------------------------------------------------------------------------- the cooldown


async def test_cooldown_pauses_every_worker(fake_clock: FakeClock) -> None:
    # 3 workers. "rl" hits a rate limit at t=0.5 (8 s cooldown until t=8.5). "slow" is in
    # flight and must finish undisturbed at t=1. "flaky" failed at t=0 and would retry at t=1,
    # but must wait for the cooldown. Nothing new may start before t=8.5.
    class Timed(ScriptedStrategy):
        def latency_for(self, prompt: str, attempt: int) -> float:
            return {"rl": 0.5, "slow": 1.0}.get(prompt, 0.0) if attempt == 1 else 0.0

    strategy = Timed(
        {"rl": [RateLimitError()], "flaky": [ConnectionError("reset")]}, clock=fake_clock
    )
    recorder = EventRecorder()
    processor = make_processor(fake_clock, config=make_config(max_workers=3), observers=[recorder])
    later = [f"n{i}" for i in range(4)]
    result = await run_batch(processor, items(strategy, "rl", "slow", "flaky", *later), fake_clock)
    assert result.succeeded == 7
    times = starts(strategy)
    assert times["rl"] == [0.0, 9.5]  # cooldown end 8.5 + backoff 1.0
    assert times["slow"] == [0.0]
    assert times["flaky"] == [0.0, 8.5]
    assert all(t[0] == 8.5 for name, t in times.items() if name in later)
    every_start = [call.at for call in strategy.calls]
    assert not [t for t in every_start if 0.0 < t < 8.5]
    slow_done = next(d for d in recorder.of(E.ITEM_COMPLETED) if d["item_id"] == "slow")
    assert slow_done["duration"] == 1.0  # the in-flight call was not interrupted
    assert recorder.of(E.COOLDOWN_ENDED) == [{"duration": 8.0}]


async def test_concurrent_rate_limits_share_one_cooldown(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    script = {name: [RateLimitError()] for name in ("a", "b", "c")}
    # All three calls are in flight together and fail together at t=1.
    strategy = ScriptedStrategy(script, clock=fake_clock, latency=1.0)
    processor = make_processor(fake_clock, config=make_config(max_workers=3), observers=[recorder])
    result = await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert result.succeeded == 3
    assert len(recorder.of(E.RATE_LIMIT_HIT)) == 3
    assert len(recorder.of(E.COOLDOWN_STARTED)) == 1
    assert recorder.of(E.COOLDOWN_STARTED)[0]["consecutive"] == 1
    assert recorder.of(E.COOLDOWN_ENDED) == [{"duration": 8.0}]
    # Cooldown 1..9, then each retry after its own 1 s backoff.
    assert all(times == [0.0, 10.0] for times in starts(strategy).values())
    assert (await processor.get_stats())["rate_limit_count"] == 3


async def test_consecutive_count_grows_and_resets_on_success(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy(
        {"a": [RateLimitError()] * 3, "b": [RateLimitError()]}, clock=fake_clock
    )
    config = make_config(
        retry_max_attempts=4, rate_cooldown_seconds=8.0, rate_backoff_multiplier=1.5
    )
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    assert recorder.of(E.COOLDOWN_STARTED) == [
        {"worker_id": 0, "duration": 8.0, "consecutive": 1},
        {"worker_id": 0, "duration": 12.0, "consecutive": 2},
        {"worker_id": 0, "duration": 18.0, "consecutive": 3},
        # "a" succeeded in between, so "b" starts the sequence again.
        {"worker_id": 0, "duration": 8.0, "consecutive": 1},
    ]
    assert [d["duration"] for d in recorder.of(E.COOLDOWN_ENDED)] == [8.0, 12.0, 18.0, 8.0]


@pytest.mark.parametrize(
    ("cooldown", "multiplier", "expected"),
    [
        pytest.param(300.0, 2.0, [300.0, 600.0, 600.0], id="grows-to-the-cap"),
        pytest.param(1000.0, 1.5, [600.0, 600.0, 600.0], id="cap-applies-to-a-larger-base"),
        pytest.param(10.0, 1.0, [10.0, 10.0, 10.0], id="multiplier-one"),
    ],
)
async def test_default_strategy_cooldown_growth_and_600_cap(
    fake_clock: FakeClock, cooldown: float, multiplier: float, expected: list[float]
) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [RateLimitError()] * 3}, clock=fake_clock)
    config = make_config(
        retry_max_attempts=4,
        rate_cooldown_seconds=cooldown,
        rate_backoff_multiplier=multiplier,
    )
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    assert isinstance(processor.rate_limit_strategy, ExponentialBackoffStrategy)
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert [d["duration"] for d in recorder.of(E.COOLDOWN_STARTED)] == expected
    assert [d["consecutive"] for d in recorder.of(E.COOLDOWN_STARTED)] == [1, 2, 3]


async def test_custom_strategy_is_asked_with_worker_id_and_consecutive_count(
    fake_clock: FakeClock,
) -> None:
    limits = Recording(cooldown=2.0)
    strategy = ScriptedStrategy(
        {"b": [RateLimitError(), RateLimitError()]}, clock=fake_clock, latency=1.0
    )
    processor = make_processor(
        fake_clock,
        config=make_config(max_workers=2, rate_cooldown_seconds=999.0),
        rate_limit_strategy=limits,
    )
    await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    assert limits.cooldown_calls == [(1, 1), (1, 2)]
    # b (worker 1) fails at 1: cooldown to 3, backoff 1 -> 4; fails at 5: cooldown to 7,
    # backoff 2 -> 9.
    assert starts(strategy)["b"] == [0.0, 4.0, 9.0]


async def test_failing_on_rate_limit_means_no_cooldown(fake_clock: FakeClock) -> None:
    class Broken(Recording):
        async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
            raise RuntimeError("bug")

    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock, latency=0.25)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=2), rate_limit_strategy=Broken()
    )
    await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    times = starts(strategy)
    # "b" and "c" ran back to back on worker 1, unpaused; "a" retried after its backoff only.
    assert times == {"a": [0.0, 1.25], "b": [0.0], "c": [0.25]}
    assert not processor._cooldown.paused


async def test_non_retryable_rate_limit_fails_right_after_the_cooldown(
    fake_clock: FakeClock,
) -> None:
    done_at: list[tuple[str, float]] = []
    strategy = ScriptedStrategy({"a": [RuntimeError("429 RESOURCE_EXHAUSTED: quota")]})
    processor = make_processor(
        fake_clock,
        error_classifier=GeminiErrorClassifier(),
        post_processor=lambda r: done_at.append((r.item_id, fake_clock.time())),
    )
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    (only,) = result.results
    assert only.success is False
    assert only.error == "RuntimeError: 429 RESOURCE_EXHAUSTED: quota"
    assert len(strategy.calls) == 1
    assert done_at == [("a", 8.0)]


async def test_rate_limited_item_retries_even_with_a_zero_cooldown(fake_clock: FakeClock) -> None:
    # Guard against a stuck pause: a cooldown of 0 must resume the workers at once.
    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(rate_cooldown_seconds=0.0))
    result = await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    assert result.succeeded == 2
    assert [c.at for c in strategy.calls] == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- Retry-After


class WithHeaders(Exception):
    """An HTTP-client style error exposing ``response.headers``."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.response = SimpleNamespace(headers=headers)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(RateLimitError(retry_after=20.0), 20.0, id="attribute-longer"),
        pytest.param(RateLimitError(retry_after=2.0), 8.0, id="attribute-shorter"),
        pytest.param(WithHeaders("429", {"retry-after": "30"}), 30.0, id="retry-after-header"),
        pytest.param(
            WithHeaders("429", {"retry-after-ms": "12500"}), 12.5, id="retry-after-ms-header"
        ),
        pytest.param(RateLimitError(), 8.0, id="none"),
    ],
)
async def test_retry_after_makes_the_cooldown_at_least_that_long(
    fake_clock: FakeClock, error: Exception, expected: float
) -> None:
    # Extension: the strategy's cooldown (8 s here) is raised to the provider's Retry-After.
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [error]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.COOLDOWN_STARTED)[0]["duration"] == expected
    assert recorder.of(E.COOLDOWN_ENDED) == [{"duration": expected}]
    assert starts(strategy)["a"] == [0.0, expected + 1.0]


async def test_retry_after_on_the_cause_is_honoured(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    wrapped = RuntimeError("429 from provider")
    wrapped.__cause__ = RateLimitError(retry_after=16.0)
    strategy = ScriptedStrategy({"a": [wrapped]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.COOLDOWN_STARTED)[0]["duration"] == 16.0


# --------------------------------------------------------------------------- slow start


async def test_slow_start_is_never_consulted_before_the_first_rate_limit(
    fake_clock: FakeClock,
) -> None:
    limits = Recording(ramp=100, delay=1.0)
    strategy = ScriptedStrategy({"a": [ConnectionError("reset by peer")]}, clock=fake_clock)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=2), rate_limit_strategy=limits
    )
    await run_batch(processor, items(strategy, "a", "b", "c", "d"), fake_clock)
    assert limits.slow_start_calls == []
    assert limits.cooldown_calls == []


async def test_slow_start_sequence_restarts_after_each_cooldown(fake_clock: FakeClock) -> None:
    limits = Recording(cooldown=4.0, ramp=2, delay=0.5)
    strategy = ScriptedStrategy(
        {"r1": [RateLimitError()], "r2": [RateLimitError()]}, clock=fake_clock
    )
    processor = make_processor(fake_clock, rate_limit_strategy=limits)
    work = items(strategy, "x", "r1", "a", "b", "c", "d", "r2", "e", "f", "g")
    await run_batch(processor, work, fake_clock)
    # After r1's cooldown: a, b (delayed, k=0,1), c (k=2 -> off); d and r2 not consulted.
    # After r2's cooldown: e, f delayed (k=0,1), g turns it off.
    assert limits.slow_start_calls == [0, 1, 2, 0, 1, 2]
    times = starts(strategy)
    # x@0, r1@0 -> cooldown to 4, retry at 5; a: +0.5 -> 5.5; b: 6.0; c, d, r2 at 6.0;
    # r2 -> cooldown 6..10, retry 11; e 11.5, f 12.0, g 12.0.
    assert times == {
        "x": [0.0],
        "r1": [0.0, 5.0],
        "a": [5.5],
        "b": [6.0],
        "c": [6.0],
        "d": [6.0],
        "r2": [6.0, 11.0],
        "e": [11.5],
        "f": [12.0],
        "g": [12.0],
    }


async def test_default_slow_start_ramp_from_the_config(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"rl": [RateLimitError()]}, clock=fake_clock)
    config = make_config(
        rate_cooldown_seconds=8.0,
        rate_slow_start_items=4,
        rate_slow_start_initial_delay=2.0,
        rate_slow_start_final_delay=0.0,
    )
    processor = make_processor(fake_clock, config=config)
    await run_batch(processor, items(strategy, "rl", "a", "b", "c", "d", "e"), fake_clock)
    times = starts(strategy)
    # Cooldown until 8, retry at 9; then delays 2.0, 1.5, 1.0, 0.5 and none after 4 items.
    assert times["rl"] == [0.0, 9.0]
    assert [times[name][0] for name in "abcde"] == [11.0, 12.5, 13.5, 14.0, 14.0]


async def test_fixed_delay_strategy_delays_every_later_item(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"rl": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(
        fake_clock, rate_limit_strategy=FixedDelayStrategy(cooldown=4.0, delay_between_requests=0.5)
    )
    later = [f"n{i}" for i in range(8)]
    await run_batch(processor, items(strategy, "first", "rl", *later), fake_clock)
    times = starts(strategy)
    assert times["first"] == [0.0]
    assert times["rl"] == [0.0, 5.0]
    assert [times[name][0] for name in later] == [5.5 + 0.5 * i for i in range(8)]


async def test_retries_are_not_slow_started(fake_clock: FakeClock) -> None:
    limits = Recording(cooldown=4.0, ramp=100, delay=3.0)
    strategy = ScriptedStrategy(
        {"rl": [RateLimitError()], "a": [ConnectionError("c"), ConnectionError("c")]},
        clock=fake_clock,
    )
    processor = make_processor(fake_clock, rate_limit_strategy=limits)
    await run_batch(processor, items(strategy, "rl", "a"), fake_clock)
    # "a" is one new item (k=0, delay 3): its two retries are not delayed by slow start.
    assert limits.slow_start_calls == [0]
    assert starts(strategy)["a"] == [8.0, 9.0, 11.0]


# --------------------------------------------------------------------------- proactive limiter


async def test_request_limiter_paces_requests_without_a_minute_burst(
    fake_clock: FakeClock,
) -> None:
    # Pacing, not bursts (spec N2): the request bucket holds about quota_burst_seconds (1 s)
    # of refill, at least one request, so 2 a minute admits one now and one every 30 s. 0.6.0
    # let a whole minute's worth (2) through at once.
    strategy = ScriptedStrategy(clock=fake_clock)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=4, max_requests_per_minute=2)
    )
    await add_all(processor, items(strategy, *"abcde"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(0.0)
    assert len(strategy.calls) == 1
    await fake_clock.advance(29.5)
    assert len(strategy.calls) == 1
    await fake_clock.advance(0.5)
    assert len(strategy.calls) == 2
    await fake_clock.run_until_idle()
    await task
    assert [call.at for call in strategy.calls] == [0.0, 30.0, 60.0, 90.0, 120.0]


async def test_request_limiter_bursts_quota_burst_seconds_worth(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock)
    config = make_config(max_workers=8, max_requests_per_minute=120, quota_burst_seconds=2.0)
    processor = make_processor(fake_clock, config=config)
    await run_batch(processor, items(strategy, *"abcdef"), fake_clock)
    # 2 a second, 2 s of burst: four at once, then one every 0.5 s.
    assert [call.at for call in strategy.calls] == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0]


async def test_request_limiter_applies_to_retries(fake_clock: FakeClock) -> None:
    class ParseError(Exception):
        """Validation-like: retried without a backoff wait."""

    strategy = ScriptedStrategy({"a": [ParseError("x"), ParseError("y")]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_requests_per_minute=2))
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert [call.at for call in strategy.calls] == [0.0, 30.0, 60.0]


async def test_request_limiter_applies_to_dry_runs(fake_clock: FakeClock) -> None:
    class DryRecorder(ScriptedStrategy):
        async def dry_run(self, prompt: str) -> tuple[str, TokenUsage]:
            self.dry_runs.append(Call(prompt, 0, 0.0, None, self.now()))
            return await super().dry_run(prompt)

    strategy = DryRecorder(clock=fake_clock)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=3, dry_run=True, max_requests_per_minute=1)
    )
    await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert [call.at for call in strategy.dry_runs] == [0.0, 60.0, 120.0]
    assert strategy.calls == []


async def test_no_limiter_without_max_requests_per_minute(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_workers=10))
    await run_batch(processor, items(strategy, *[f"i{n}" for n in range(10)]), fake_clock)
    assert [call.at for call in strategy.calls] == [0.0] * 10
    assert processor._quota is None


async def test_request_limiter_below_one_request_per_minute_still_admits(
    fake_clock: FakeClock,
) -> None:
    # 0.5 requests a minute is a valid setting: one request every 120 s (burst of one).
    strategy = ScriptedStrategy(clock=fake_clock)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=3, max_requests_per_minute=0.5)
    )
    await add_all(processor, items(strategy, "a", "b", "c"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(1000.0)  # bounded: a limiter that never admits must not hang us
    assert task.done()
    assert (await task).succeeded == 3
    assert [call.at for call in strategy.calls] == [0.0, 120.0, 240.0]


async def test_rate_limit_during_a_running_cooldown_joins_it(fake_clock: FakeClock) -> None:
    # "a" fails at t=1 and starts an 8 s cooldown; "b", still in flight, fails at t=2 and must
    # neither start a second cooldown nor bump the consecutive count.
    class Timed(ScriptedStrategy):
        def latency_for(self, prompt: str, attempt: int) -> float:
            return {"a": 1.0, "b": 2.0}[prompt] if attempt == 1 else 0.0

    recorder = EventRecorder()
    strategy = Timed({"a": [RateLimitError()], "b": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_workers=2), observers=[recorder])
    await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    assert recorder.of(E.COOLDOWN_STARTED) == [{"worker_id": 0, "duration": 8.0, "consecutive": 1}]
    assert len(recorder.of(E.RATE_LIMIT_HIT)) == 2
    assert starts(strategy) == {"a": [0.0, 10.0], "b": [0.0, 10.0]}


async def test_worker_rechecks_the_pause_after_its_slow_start_delay() -> None:
    """A cooldown that begins while a worker sits out its slow-start delay holds that worker too."""
    clock = FakeClock()
    call_times: dict[str, list[float]] = {"a": [], "b": []}

    class Script(LLMCallStrategy[str]):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            call_times[prompt].append(clock.time())
            if prompt == "a" and attempt < 3:
                raise RuntimeError("429 Too Many Requests")
            return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

    config = ProcessorConfig(
        max_workers=2,
        retry=RetryConfig(max_attempts=3, initial_wait=1.0, jitter=False),
        rate_limit=RateLimitConfig(
            cooldown_seconds=10.0,
            backoff_multiplier=1.0,
            slow_start_items=10,
            slow_start_initial_delay=5.0,
            slow_start_final_delay=5.0,
        ),
    )
    processor = ParallelBatchProcessor[str, str, None](config=config, clock=clock)
    strategy = Script()
    for name in ("a", "b"):
        await processor.add_work(LLMWorkItem(item_id=name, strategy=strategy, prompt=name))
    batch = asyncio.create_task(processor.process_all())
    await clock.run_until_idle()
    result = await batch

    assert result.succeeded == 2
    # a: 429 at 0 -> cooldown [0, 10] -> backoff 1 s -> 429 at 11 -> cooldown [11, 21] -> +2 s.
    assert call_times["a"] == [0.0, 11.0, 23.0]
    # b waited out the first cooldown, then its 5 s slow-start delay (until 15), which ended
    # inside the second cooldown: it must not call before that cooldown ends at 21.
    assert call_times["b"] == [21.0]
