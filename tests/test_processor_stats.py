"""Statistics (§3.7, §4.14): ``get_stats()`` before, during and after a batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    LLMWorkItem,
    ProcessingEvent,
    WorkItemResult,
)
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    Outcome,
    RateLimitError,
    ScriptedStrategy,
    add_all,
    drive,
    items,
    make_config,
    make_processor,
    run_batch,
)

STATS_KEYS = [
    "total",
    "processed",
    "succeeded",
    "failed",
    "start_time",
    "error_counts",
    "rate_limit_count",
    "total_input_tokens",
    "total_output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "total_cached_tokens",
]


async def test_stats_before_process_all() -> None:
    processor = make_processor()
    assert await processor.get_stats() == dict.fromkeys(STATS_KEYS, 0) | {
        "start_time": None,
        "error_counts": {},
    }
    await add_all(processor, items(ScriptedStrategy(), "a", "b", "c"))
    stats = await processor.get_stats()
    assert list(stats) == STATS_KEYS
    assert stats["total"] == 3
    assert stats["start_time"] is None
    assert stats["processed"] == 0


async def test_stats_after_a_mixed_batch(fake_clock: FakeClock) -> None:
    class SkipS(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None if work_item.item_id == "s" else work_item

    strategy = ScriptedStrategy(
        {"v": [ValueError("bad")], "c": [ConnectionError("reset")] * 3, "k": [KeyError("k")]}
    )
    processor = make_processor(fake_clock, middlewares=[SkipS()])
    before = time.time()
    await run_batch(processor, items(strategy, "ok", "v", "c", "k", "s"), fake_clock)
    stats = await processor.get_stats()
    assert (stats["total"], stats["processed"], stats["succeeded"], stats["failed"]) == (5, 5, 1, 4)
    assert stats["error_counts"] == {
        "ValueError": 1,
        "ConnectionError": 1,
        "KeyError": 1,
        "Skipped by middleware": 1,
    }
    assert before <= stats["start_time"] <= time.time()
    assert stats["rate_limit_count"] == 0
    assert stats["total_input_tokens"] == 10  # the one success (failures here report none)


async def test_every_snapshot_during_a_run_is_consistent(fake_clock: FakeClock) -> None:
    processor = make_processor(fake_clock, config=make_config(max_workers=3))
    snapshots: list[dict[str, Any]] = []

    class Snapshotting(BaseObserver):
        async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
            snapshots.append(await processor.get_stats())

    processor.observers.append(Snapshotting())
    script: dict[str, list[Outcome]] = {f"i{n}": [ConnectionError("c")] for n in range(0, 12, 3)}
    script |= {f"i{n}": [ValueError("v")] for n in range(1, 12, 4)}
    strategy = ScriptedStrategy(script, clock=fake_clock, latency=0.5)
    await add_all(processor, items(strategy, *[f"i{n}" for n in range(12)]))
    task = asyncio.ensure_future(processor.process_all())
    polled: list[dict[str, Any]] = []
    while not task.done():
        polled.append(await processor.get_stats())
        await fake_clock.advance(0.25)
    await task
    assert len(snapshots) > 30
    assert len(polled) > 5
    for stats in snapshots + polled:
        assert stats["processed"] == stats["succeeded"] + stats["failed"]
        assert stats["total"] == 12
        assert stats["processed"] <= stats["total"]
    assert [s["processed"] for s in polled] == sorted(s["processed"] for s in polled)


async def test_get_stats_returns_an_independent_copy() -> None:
    processor = make_processor()
    strategy = ScriptedStrategy({"a": [ValueError("v")]})
    await run_batch(processor, items(strategy, "a"))
    stats = await processor.get_stats()
    stats["error_counts"]["ValueError"] = 99
    stats["processed"] = 99
    fresh = await processor.get_stats()
    assert fresh["error_counts"] == {"ValueError": 1}
    assert fresh["processed"] == 1


async def test_rate_limit_count_counts_attempts_not_cooldowns(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(
        {
            "a": [RateLimitError(), RateLimitError()],
            "b": [RateLimitError()],
            "c": [RateLimitError()],
        },
        clock=fake_clock,
        latency=1.0,
    )
    processor = make_processor(fake_clock, config=make_config(max_workers=3, retry_max_attempts=3))
    result = await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert result.succeeded == 3
    assert processor._cooldown.cooldowns == 2  # a, b, c together; then a alone
    assert (await processor.get_stats())["rate_limit_count"] == 4


async def test_error_counts_use_the_text_before_the_first_colon() -> None:
    class Custom(BaseMiddleware[str, str, Any]):
        async def on_error(
            self, work_item: LLMWorkItem[str, str, Any], error: Exception
        ) -> WorkItemResult[str, Any] | None:
            return WorkItemResult(
                item_id=work_item.item_id, success=False, error="Quota: exceeded: twice"
            )

    strategy = ScriptedStrategy({"a": [ValueError("v")]})
    processor = make_processor(middlewares=[Custom()])
    await run_batch(processor, items(strategy, "a"))
    assert (await processor.get_stats())["error_counts"] == {"Quota": 1}


async def test_process_all_resets_the_statistics(fake_clock: FakeClock) -> None:
    processor = make_processor(fake_clock)
    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock)
    await run_batch(processor, items(strategy, "a"), fake_clock)
    first = await processor.get_stats()
    assert first["rate_limit_count"] == 1
    await drive(fake_clock, processor.process_all())
    second = await processor.get_stats()
    assert second | {"start_time": None} == dict.fromkeys(STATS_KEYS, 0) | {
        "start_time": None,
        "error_counts": {},
    }
    assert second["start_time"] is not None
    assert second["start_time"] >= first["start_time"]
