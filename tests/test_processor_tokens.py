"""Token accounting (§4.7 as amended by D9: every attempt is counted)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    LLMWorkItem,
    ProcessingEvent,
    RetryState,
    TokenTrackingError,
    TokenUsage,
)
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    EventRecorder,
    RateLimitError,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)

SPENT: TokenUsage = {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}


def costly(error: type[Exception] = ConnectionError, usage: TokenUsage = SPENT) -> Exception:
    """An exception carrying usage by the documented attachment convention."""
    exc = error("call failed after spending tokens")
    exc.__dict__["_failed_token_usage"] = dict(usage)
    return exc


async def test_success_after_retries_reports_every_attempt(fake_clock: FakeClock) -> None:
    final: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    strategy = ScriptedStrategy({"a": [costly(), costly(), ("done", final)]})
    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    (only,) = result.results
    assert only.success is True
    assert only.token_usage == {"input_tokens": 210, "output_tokens": 105, "total_tokens": 315}
    assert (result.total_input_tokens, result.total_output_tokens) == (210, 105)


async def test_success_on_first_attempt_reports_exactly_what_was_returned() -> None:
    returned: TokenUsage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    strategy = ScriptedStrategy({"a": [("done", returned)]})
    result = await run_batch(make_processor(), items(strategy, "a"))
    assert result.results[0].token_usage == returned


async def test_success_after_retries_keeps_cached_tokens(fake_clock: FakeClock) -> None:
    cached_fail: TokenUsage = {**SPENT, "cached_input_tokens": 60}
    final: TokenUsage = {
        "input_tokens": 100,
        "output_tokens": 10,
        "total_tokens": 110,
        "cached_input_tokens": 90,
    }
    strategy = ScriptedStrategy({"a": [costly(usage=cached_fail), ("done", final)]})
    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].token_usage == {
        "input_tokens": 200,
        "output_tokens": 60,
        "total_tokens": 260,
        "cached_input_tokens": 150,
    }
    assert result.total_cached_tokens == 150


async def test_exhausted_retries_sum_all_attempts(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [costly(), costly(), costly()]})
    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].token_usage == {
        "input_tokens": 300,
        "output_tokens": 150,
        "total_tokens": 450,
        "cached_input_tokens": 0,
    }


async def test_non_retryable_failure_includes_earlier_attempts(fake_clock: FakeClock) -> None:
    last: TokenUsage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    strategy = ScriptedStrategy({"a": [costly(), costly(ValueError, last)]})
    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    (only,) = result.results
    assert only.error is not None
    assert only.error.startswith("ValueError: ")
    assert only.token_usage == {
        "input_tokens": 107,
        "output_tokens": 53,
        "total_tokens": 160,
        "cached_input_tokens": 0,
    }


async def test_failure_without_usage_reports_four_zero_keys() -> None:
    strategy = ScriptedStrategy({"a": [ValueError("nothing spent")]})
    result = await run_batch(make_processor(), items(strategy, "a"))
    assert result.results[0].token_usage == {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "cached_input_tokens": 0,
    }


async def test_rate_limited_attempts_are_counted(fake_clock: FakeClock) -> None:
    limited = RateLimitError()
    limited.__dict__["_failed_token_usage"] = {"input_tokens": 40, "total_tokens": 40}
    final: TokenUsage = {"input_tokens": 40, "output_tokens": 8, "total_tokens": 48}
    strategy = ScriptedStrategy({"a": [limited, ("done", final)]})
    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].token_usage == {
        "input_tokens": 80,
        "output_tokens": 8,
        "total_tokens": 88,
    }


class LegacyUsage:
    """The 0.6.0 pydantic-ai usage shape."""

    request_tokens = 11
    response_tokens = 22
    total_tokens = 33


class CurrentUsage:
    """The pydantic-ai 2.x usage shape."""

    input_tokens = 4
    output_tokens = 5
    total_tokens = 9


class WithUsage(Exception):
    def __init__(self, usage: Any) -> None:
        super().__init__("failed with usage")
        self.usage = usage


class WrappedRun(Exception):
    """Stands in for a pydantic-ai failure whose cause holds the run ``result``."""

    def __init__(self) -> None:
        super().__init__("wrapped")

        class Result:
            def usage(self) -> LegacyUsage:
                return LegacyUsage()

        self.result = Result()


def wrapped_failure() -> Exception:
    exc = RuntimeError("output validation failed")
    exc.__cause__ = WrappedRun()
    return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(wrapped_failure(), (11, 22, 33), id="cause-result-usage"),
        pytest.param(WithUsage(LegacyUsage()), (11, 22, 33), id="usage-attribute-legacy"),
        pytest.param(WithUsage(CurrentUsage()), (4, 5, 9), id="usage-attribute-current"),
        pytest.param(WithUsage(lambda: CurrentUsage()), (4, 5, 9), id="usage-callable"),
        pytest.param(
            TokenTrackingError("tracked", token_usage={"input_tokens": 1, "total_tokens": 1}),
            (1, 0, 1),
            id="token-tracking-error",
        ),
    ],
)
async def test_usage_is_extracted_from_the_failed_attempt(
    error: Exception, expected: tuple[int, int, int]
) -> None:
    strategy = ScriptedStrategy({"a": [error]})
    processor = make_processor(config=make_config(retry_max_attempts=1))
    result = await run_batch(processor, items(strategy, "a"))
    usage = result.results[0].token_usage
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == expected


async def test_prepare_failure_and_skip_usage() -> None:
    class NoPrepare(ScriptedStrategy):
        async def prepare(self) -> None:
            raise OSError("down")

    class SkipB(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None if work_item.item_id == "b" else work_item

    processor = make_processor(middlewares=[SkipB()])
    result = await run_batch(processor, [*items(NoPrepare(), "a"), *items(ScriptedStrategy(), "b")])
    usage = {r.item_id: r.token_usage for r in result.results}
    assert usage == {"a": {}, "b": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}


class Ledger(ScriptedStrategy):
    """Randomly succeeds or fails, remembering every token it reports."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.reported = {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}
        self.total_reported = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        spent_in = self.rng.randint(1, 100)
        spent_out = self.rng.randint(1, 100)
        cached = self.rng.randint(0, 1)
        usage: TokenUsage = {
            "input_tokens": spent_in,
            "output_tokens": spent_out,
            "total_tokens": spent_in + spent_out,
            "cached_input_tokens": cached,
        }
        self.reported["input_tokens"] += spent_in
        self.reported["output_tokens"] += spent_out
        self.reported["cached_input_tokens"] += cached
        self.total_reported += spent_in + spent_out
        roll = self.rng.random()
        if roll < 0.3:
            raise costly(ConnectionError, usage)
        if roll < 0.4:
            raise costly(ValueError, usage)
        return "ok", usage


async def test_batch_totals_equal_everything_the_strategy_reported(fake_clock: FakeClock) -> None:
    strategy = Ledger(seed=1234)
    recorder = EventRecorder()
    processor = make_processor(
        fake_clock, config=make_config(max_workers=4, retry_max_attempts=3), observers=[recorder]
    )
    result = await run_batch(processor, items(strategy, *[f"i{n}" for n in range(40)]), fake_clock)
    assert result.failed > 0  # the seed gives a mix of outcomes
    assert result.succeeded > 0
    assert result.total_input_tokens == strategy.reported["input_tokens"]
    assert result.total_output_tokens == strategy.reported["output_tokens"]
    assert result.total_cached_tokens == strategy.reported["cached_input_tokens"]
    stats = await processor.get_stats()
    assert stats["total_input_tokens"] == strategy.reported["input_tokens"]
    assert stats["total_output_tokens"] == strategy.reported["output_tokens"]
    assert stats["total_tokens"] == strategy.total_reported
    assert stats["cached_input_tokens"] == strategy.reported["cached_input_tokens"]
    (completed,) = recorder.of(ProcessingEvent.BATCH_COMPLETED)
    assert completed["total_tokens"] == strategy.total_reported
    assert completed["cached_input_tokens"] == strategy.reported["cached_input_tokens"]


async def test_cached_tokens_flow_into_batch_and_stats_totals() -> None:
    usage: TokenUsage = {
        "input_tokens": 5000,
        "output_tokens": 100,
        "total_tokens": 5100,
        "cached_input_tokens": 4500,
    }
    strategy = ScriptedStrategy({"a": [("done", usage)]})
    processor = make_processor()
    result = await run_batch(processor, items(strategy, "a"))
    assert result.total_cached_tokens == 4500
    assert result.cache_hit_rate() == 90.0
    assert result.effective_input_tokens() == 950
    stats = await processor.get_stats()
    assert stats["cached_input_tokens"] == 4500
    assert stats["total_cached_tokens"] == 0  # quirk (mirror): never updated
