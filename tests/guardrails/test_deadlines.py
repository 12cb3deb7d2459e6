"""Batch timeout, total time per item, and the time limits on hooks that could hang a batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    GuardrailConfig,
    LLMWorkItem,
    ProcessingEvent,
    WorkItemResult,
)
from async_batch_llm._internal import batch as batch_module
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


async def test_batch_timeout_stops_calls_and_gives_every_item_a_result(
    fake_clock: FakeClock,
) -> None:
    strategy = ScriptedStrategy(clock=fake_clock, latency=0.75)
    recorder = EventRecorder()
    config = make_config(guardrails=GuardrailConfig(batch_timeout=2.0))
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    prompts = [f"p{i}" for i in range(10)]
    batch = await run_batch(processor, items(strategy, *prompts), fake_clock)

    assert fake_clock.time() == 2.0  # returned at the deadline, not after the 10 calls
    assert batch.termination.kind == "batch_timeout"
    assert batch.termination.error_category == "batch_timeout"
    assert "batch_timeout=2.0" in batch.termination.reason
    assert len(batch.results) == 10
    results = {r.item_id: r for r in batch.results}
    assert results["p0"].success
    assert results["p1"].success
    assert "cancelled:p2" in strategy.log  # in flight at the deadline: cancelled
    for prompt in prompts[2:]:
        assert results[prompt].error_category == "batch_timeout"
        assert (results[prompt].error or "").startswith("BatchTimeout: ")
    assert all(call.at < 2.0 for call in strategy.calls)  # no call starts after the deadline
    assert len(recorder.of(ProcessingEvent.ITEM_FAILED)) == 8


async def test_a_batch_that_finishes_in_time_is_completed(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock, latency=0.5)
    config = make_config(guardrails=GuardrailConfig(batch_timeout=2.0))
    batch = await run_batch(
        make_processor(fake_clock, config=config), items(strategy, "a", "b"), fake_clock
    )
    assert batch.termination.kind == "completed"
    assert fake_clock.time() == 1.0


async def test_total_timeout_per_item_covers_retries_and_backoff(fake_clock: FakeClock) -> None:
    # "slow" fails every attempt and waits 4 s between attempts: its 5 s run out in the
    # second backoff wait. "fine" is untouched and the batch goes on.
    strategy = ScriptedStrategy({"slow": [ConnectionError("reset")] * 5})
    config = make_config(
        retry_max_attempts=5,
        retry_initial_wait=4.0,
        retry_exponential_base=1.0,
        guardrails=GuardrailConfig(total_timeout_per_item=5.0),
    )
    processor = make_processor(fake_clock, config=config)
    batch = await run_batch(processor, items(strategy, "slow", "fine"), fake_clock)

    results = {r.item_id: r for r in batch.results}
    assert results["slow"].error_category == "item_timeout"
    assert (results["slow"].error or "").startswith("ItemTimeout: ")
    assert "total_timeout_per_item=5.0" in (results["slow"].error or "")
    assert len(strategy.calls_for("slow")) == 2  # at t=0 and t=4; the third would be at t=8
    assert results["fine"].success
    assert batch.termination.kind == "completed"


async def test_total_timeout_per_item_covers_the_cooldown_wait(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [RateLimitError()]})
    config = make_config(
        rate_cooldown_seconds=100.0,
        guardrails=GuardrailConfig(total_timeout_per_item=30.0),
    )
    processor = make_processor(fake_clock, config=config)
    batch = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert batch.results[0].error_category == "item_timeout"
    assert fake_clock.time() < 100.0


class Hangs(BaseMiddleware[str, str, Any]):
    def __init__(self, where: str) -> None:
        self.where = where

    async def before_process(
        self, work_item: LLMWorkItem[str, str, Any]
    ) -> LLMWorkItem[str, str, Any] | None:
        if self.where == "before":
            await asyncio.Event().wait()
        return work_item

    async def after_process(self, result: WorkItemResult[str, Any]) -> WorkItemResult[str, Any]:
        if self.where == "after":
            await asyncio.Event().wait()
        return result


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_hanging_middleware_hook_is_bounded_by_timeout_per_item(where: str) -> None:
    strategy = ScriptedStrategy()
    config = make_config(timeout_per_item=0.05)
    processor = make_processor(config=config, middlewares=[Hangs(where)])
    batch = await asyncio.wait_for(run_batch(processor, items(strategy, "a")), 10)
    assert batch.results[0].success  # the hook is logged and skipped; the item stands


async def test_a_hanging_prepare_fails_its_item_instead_of_hanging_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "STRATEGY_PREPARE_TIMEOUT", 0.05)

    class SlowPrepare(ScriptedStrategy):
        async def prepare(self) -> None:
            await asyncio.Event().wait()

    strategy = SlowPrepare()
    batch = await asyncio.wait_for(run_batch(make_processor(), items(strategy, "a")), 10)
    result = batch.results[0]
    assert result.success is False
    assert "SlowPrepare.prepare() did not finish within 0.05 s" in (result.error or "")
    assert result.error_category == "timeout"
    assert strategy.calls == []
