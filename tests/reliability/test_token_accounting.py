"""Every token a provider reports is counted, whichever way the item ends (G4, spec D9).

The fault-injection suite covers success, exhaustion and fatal errors. These cases cover the
other ways an item can end after attempts that cost tokens: a middleware that skips a retry, a
middleware ``on_error`` that supplies the result, a middleware ``after_process`` that replaces
the result, and the usage-reporting conventions of spec §4.7.
"""

from __future__ import annotations

from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.testing.clock import FakeClock

from ._support import drive, normalised

FAILED_USAGE = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
OK_COUNTS = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10, "cached_input_tokens": 5}
OK_USAGE: TokenUsage = {
    "input_tokens": 7,
    "output_tokens": 3,
    "total_tokens": 10,
    "cached_input_tokens": 5,
}


class FailTwiceThenSucceed(LLMCallStrategy[str]):
    """Attempts 1 and 2 fail (retryably) after spending tokens; attempt 3 succeeds."""

    def __init__(self, fail: int = 2, reporting: str = "attachment") -> None:
        self.fail = fail
        self.reporting = reporting
        self.calls = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        if attempt <= self.fail:
            if self.reporting == "token_error":
                raise TokenTrackingError("upstream 503", token_usage=FAILED_USAGE)
            error = ConnectionError("connection reset")
            error.__dict__["_failed_token_usage"] = dict(FAILED_USAGE)
            raise error
        return "done", dict(OK_USAGE)  # type: ignore[return-value]  # a TokenUsage-shaped dict


class SkipRetries(BaseMiddleware[str, str, None]):
    """Lets attempt 1 through, skips the item on its retry."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    async def before_process(
        self, work_item: LLMWorkItem[str, str, None]
    ) -> LLMWorkItem[str, str, None] | None:
        self.seen[work_item.item_id] = self.seen.get(work_item.item_id, 0) + 1
        return work_item if self.seen[work_item.item_id] == 1 else None


class Fallback(BaseMiddleware[str, str, None]):
    """Supplies a successful fallback result for any failing item."""

    async def on_error(
        self, work_item: LLMWorkItem[str, str, None], error: Exception
    ) -> WorkItemResult[str, None] | None:
        return WorkItemResult(item_id=work_item.item_id, success=True, output="fallback")


class Rewrap(BaseMiddleware[str, str, None]):
    """Replaces every successful result with a new object (keeping its usage)."""

    async def after_process(self, result: WorkItemResult[str, None]) -> WorkItemResult[str, None]:
        return WorkItemResult(
            item_id=result.item_id,
            success=True,
            output=f"rewrapped {result.output}",
            token_usage=result.token_usage,
        )


async def run_one(
    strategy: LLMCallStrategy[str], middlewares: list[Any], max_attempts: int = 3
) -> WorkItemResult[str, None]:
    clock = FakeClock()
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=ProcessorConfig(max_workers=1, retry=RetryConfig(max_attempts=max_attempts)),
        middlewares=middlewares,
        clock=clock,
    )

    async def body() -> WorkItemResult[str, None]:
        async with processor:
            await processor.add_work(LLMWorkItem(item_id="only", strategy=strategy, prompt="p"))
            result = await processor.process_all()
        assert result.total_items == 1
        stats = await processor.get_stats()
        batch_usage = {
            "input_tokens": result.total_input_tokens,
            "output_tokens": result.total_output_tokens,
            "cached_input_tokens": result.total_cached_tokens,
        }
        item_usage = normalised(result.results[0].token_usage)
        assert batch_usage == {k: item_usage[k] for k in batch_usage}
        assert stats["total_input_tokens"] == item_usage["input_tokens"]
        return result.results[0]

    return await drive(clock, body())


def spent(failed_attempts: int, success: bool) -> dict[str, int]:
    usage = {
        "input_tokens": 100 * failed_attempts,
        "output_tokens": 20 * failed_attempts,
        "total_tokens": 120 * failed_attempts,
        "cached_input_tokens": 0,
    }
    if success:
        usage = {k: usage[k] + OK_COUNTS[k] for k in usage}
    return usage


@pytest.mark.parametrize("reporting", ["attachment", "token_error"])
async def test_success_after_retries_counts_every_attempt(reporting: str) -> None:
    result = await run_one(FailTwiceThenSucceed(reporting=reporting), [])
    assert result.success
    assert normalised(result.token_usage) == spent(2, success=True)


async def test_exhausted_retries_count_every_attempt() -> None:
    result = await run_one(FailTwiceThenSucceed(fail=5), [])
    assert not result.success
    assert normalised(result.token_usage) == spent(3, success=False)


async def test_after_process_replacing_the_result_keeps_every_attempt_counted() -> None:
    result = await run_one(FailTwiceThenSucceed(), [Rewrap()])
    assert result.output == "rewrapped done"
    assert normalised(result.token_usage) == spent(2, success=True)


async def test_a_retry_skipped_by_middleware_still_reports_the_attempts_that_ran() -> None:
    strategy = FailTwiceThenSucceed()
    result = await run_one(strategy, [SkipRetries()])
    assert strategy.calls == 1
    assert not result.success
    assert result.error == "Skipped by middleware"
    assert normalised(result.token_usage) == spent(1, success=False)


async def test_a_result_supplied_by_middleware_on_error_still_reports_the_attempts() -> None:
    strategy = FailTwiceThenSucceed(fail=5)
    result = await run_one(strategy, [Fallback()])
    assert strategy.calls == 3
    assert result.success
    assert result.output == "fallback"
    assert normalised(result.token_usage) == spent(3, success=False)
