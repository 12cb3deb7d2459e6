"""Processor lifecycle: queueing (§4.3), batch order, strategy lifecycle (§4.9), dry run and
cancellation (D10)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any, cast

import pytest

from async_batch_llm import LLMWorkItem, RetryState, TokenUsage
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked
from tests.conftest import (
    RateLimitError,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)

# --------------------------------------------------------------------------- queueing and results


async def test_one_worker_returns_results_in_insertion_order() -> None:
    strategy = ScriptedStrategy()
    result = await run_batch(make_processor(), items(strategy, "a", "b", "c", "d"))
    assert [r.item_id for r in result.results] == ["a", "b", "c", "d"]
    assert [r.output for r in result.results] == ["ok:a", "ok:b", "ok:c", "ok:d"]
    assert (result.total_items, result.succeeded, result.failed) == (4, 4, 0)


async def test_results_are_in_completion_order_with_many_workers() -> None:
    gates = {name: asyncio.Event() for name in "abc"}

    class Gated(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            await gates[prompt].wait()
            return await super().execute(prompt, attempt, timeout, state)

    processor = make_processor(config=make_config(max_workers=3))
    await add_all(processor, items(Gated(), "a", "b", "c"))
    task = asyncio.create_task(processor.process_all())
    for name in "cab":
        await wait_all_tasks_blocked()
        gates[name].set()
    result = await task
    assert [r.item_id for r in result.results] == ["c", "a", "b"]


async def test_exactly_one_result_per_item_whatever_the_outcome() -> None:
    strategy = ScriptedStrategy(
        {"bad": [ValueError("no")], "flaky": [ConnectionError("reset")], "dead": [OSError()] * 3}
    )
    processor = make_processor(config=make_config(max_workers=3, retry_initial_wait=0.001))
    result = await run_batch(processor, items(strategy, "ok", "bad", "flaky", "dead"))
    assert sorted(r.item_id for r in result.results) == ["bad", "dead", "flaky", "ok"]
    assert {r.item_id: r.success for r in result.results} == {
        "ok": True,
        "bad": False,
        "flaky": True,
        "dead": False,
    }


async def test_empty_batch_returns_empty_result() -> None:
    result = await make_processor().process_all()
    assert result.results == []
    assert result.total_items == 0


async def test_context_is_passed_through_untouched_on_success_and_failure() -> None:
    context: dict[str, Any] = {"row": 7}
    strategy = ScriptedStrategy({"bad": [ValueError("no")]})
    result = await run_batch(make_processor(), items(strategy, "good", "bad", context=context))
    assert all(r.context is context for r in result.results)


async def test_add_work_after_process_all_raises() -> None:
    processor = make_processor()
    await processor.process_all()
    with pytest.raises(RuntimeError, match=r"Cannot add work after process_all\(\) has started"):
        await processor.add_work(items(ScriptedStrategy(), "late")[0])


async def test_add_work_while_process_all_runs_raises() -> None:
    gate = asyncio.Event()
    processor = make_processor()
    await add_all(processor, items(ScriptedStrategy(gate=gate), "a"))
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()
    with pytest.raises(RuntimeError, match=r"Cannot add work after process_all\(\) has started"):
        await processor.add_work(items(ScriptedStrategy(), "late")[0])
    gate.set()
    assert [r.item_id for r in (await task).results] == ["a"]


async def test_second_process_all_returns_empty_result_and_resets_stats() -> None:
    processor = make_processor()
    first = await run_batch(processor, items(ScriptedStrategy(), "a", "b"))
    assert first.total_items == 2
    second = await processor.process_all()
    assert second.results == []
    stats = await processor.get_stats()
    assert (stats["total"], stats["processed"], stats["succeeded"]) == (0, 0, 0)


async def test_full_bounded_queue_refuses_more_work_before_process_all() -> None:
    # Extension (documented): upstream would block add_work forever, as nothing drains the queue
    # before process_all(); we raise instead.
    processor = make_processor(config=make_config(max_queue_size=2))
    strategy = ScriptedStrategy()
    await add_all(processor, items(strategy, "a", "b"))
    with pytest.raises(RuntimeError, match=r"max_queue_size=2"):
        await processor.add_work(items(strategy, "c")[0])
    assert (await processor.get_stats())["total"] == 2
    result = await processor.process_all()
    assert [r.item_id for r in result.results] == ["a", "b"]


async def test_duplicate_item_id_is_refused_naming_the_id() -> None:
    processor = make_processor()
    strategy = ScriptedStrategy()
    await processor.add_work(items(strategy, "item-42")[0])
    with pytest.raises(ValueError, match=r"'item-42'"):
        await processor.add_work(items(strategy, "item-42")[0])
    assert (await processor.get_stats())["total"] == 1


async def test_no_more_than_max_workers_calls_run_at_once() -> None:
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    processor = make_processor(config=make_config(max_workers=3))
    await add_all(processor, items(strategy, *[f"i{n}" for n in range(7)]))
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()
    assert len(strategy.calls) == 3
    gate.set()
    result = await task
    assert len(strategy.calls) == 7
    assert result.succeeded == 7


# --------------------------------------------------------------------------- strategy lifecycle


class SlowPrepare(ScriptedStrategy):
    """``prepare()`` yields several times, so concurrent first uses overlap with it."""

    async def prepare(self) -> None:
        self.log.append("prepare-begin")
        for _ in range(5):
            await asyncio.sleep(0)
        await super().prepare()


async def test_shared_strategy_is_prepared_once_despite_concurrent_first_use() -> None:
    strategy = SlowPrepare()
    processor = make_processor(config=make_config(max_workers=5))
    result = await run_batch(processor, items(strategy, *[f"i{n}" for n in range(10)]))
    assert result.succeeded == 10
    assert strategy.prepared == 1
    assert strategy.log.count("prepare-begin") == 1
    first_start = next(i for i, entry in enumerate(strategy.log) if entry.startswith("start:"))
    assert strategy.log.index("prepare") < first_start


async def test_each_distinct_strategy_is_prepared_once() -> None:
    one, two = ScriptedStrategy(), ScriptedStrategy()
    processor = make_processor(config=make_config(max_workers=2))
    await run_batch(processor, [*items(one, "a", "b", "c"), *items(two, "x", "y")])
    assert (one.prepared, two.prepared) == (1, 1)


class FailingPrepare(ScriptedStrategy):
    """``prepare()`` raises the given exceptions in turn, then succeeds."""

    def __init__(self, *failures: Exception) -> None:
        super().__init__()
        self.failures = list(failures)
        self.prepare_attempts = 0

    async def prepare(self) -> None:
        self.prepare_attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        await super().prepare()


async def test_prepare_failure_fails_the_item_and_is_retried_by_the_next_item() -> None:
    strategy = FailingPrepare(RuntimeError("cache service down"))
    async with make_processor() as processor:
        result = await run_batch(processor, items(strategy, "a", "b"))
    a, b = result.results
    assert a.success is False
    assert a.error == "RuntimeError: cache service down"
    assert a.token_usage == {}
    assert b.success is True
    assert strategy.prepare_attempts == 2
    assert [call.prompt for call in strategy.calls] == ["b"]
    assert strategy.errors == []  # on_error is not told about prepare failures
    assert strategy.cleaned == 1  # prepared (hence cleaned) only once


async def test_prepare_failure_error_is_truncated_to_200_characters() -> None:
    strategy = FailingPrepare(RuntimeError("x" * 300))
    result = await run_batch(make_processor(), items(strategy, "a"))
    assert result.results[0].error == "RuntimeError: " + "x" * 200


async def test_cleanup_runs_once_at_context_exit_never_from_process_all_or_cleanup() -> None:
    strategy = ScriptedStrategy()
    async with make_processor(config=make_config(max_workers=2)) as processor:
        await run_batch(processor, items(strategy, "a", "b", "c"))
        assert strategy.cleaned == 0
        await processor.cleanup()
        await processor.cleanup()
        assert strategy.cleaned == 0
    assert strategy.cleaned == 1
    assert strategy.log[-1] == "cleanup"


async def test_shutdown_cleans_up_once_and_a_second_shutdown_does_nothing() -> None:
    strategy = ScriptedStrategy()
    processor = make_processor()
    await run_batch(processor, items(strategy, "a"))
    await processor.shutdown()
    await processor.shutdown()
    assert strategy.cleaned == 1


async def test_without_context_manager_or_shutdown_cleanup_never_runs() -> None:
    strategy = ScriptedStrategy()
    processor = make_processor()
    await run_batch(processor, items(strategy, "a"))
    await processor.cleanup()
    assert strategy.cleaned == 0


async def test_cleanup_exceptions_are_swallowed_and_others_still_cleaned() -> None:
    class BadCleanup(ScriptedStrategy):
        async def cleanup(self) -> None:
            await super().cleanup()
            raise RuntimeError("cleanup exploded")

    bad, good = BadCleanup(), ScriptedStrategy()
    async with make_processor() as processor:
        await run_batch(processor, [*items(bad, "a"), *items(good, "b")])
    assert (bad.cleaned, good.cleaned) == (1, 1)


async def test_unprepared_strategies_are_not_cleaned_up() -> None:
    strategy = ScriptedStrategy()
    async with make_processor() as processor:
        await add_all(processor, items(strategy, "a"))
    assert (strategy.prepared, strategy.cleaned) == (0, 0)


async def test_processor_does_not_keep_strategies_alive() -> None:
    processor = make_processor()
    strategy = ScriptedStrategy()
    ref = weakref.ref(strategy)
    await run_batch(processor, items(strategy, "a"))
    del strategy
    gc.collect()
    assert ref() is None


class SlottedStrategy:
    """A duck-typed strategy without a ``__weakref__`` slot: the processor must hold it strongly
    to track it."""

    __slots__ = ("calls", "cleaned", "prepared")

    def __init__(self) -> None:
        self.prepared = self.cleaned = self.calls = 0

    async def prepare(self) -> None:
        self.prepared += 1

    async def cleanup(self) -> None:
        self.cleaned += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        await asyncio.sleep(0)
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


async def test_strategy_without_weakref_support_is_prepared_and_cleaned_once() -> None:
    strategy = SlottedStrategy()
    with pytest.raises(TypeError):
        weakref.ref(strategy)
    async with make_processor(config=make_config(max_workers=3)) as processor:
        result = await run_batch(processor, items(cast(Any, strategy), "a", "b", "c", "d"))
    assert result.succeeded == 4
    assert (strategy.prepared, strategy.calls, strategy.cleaned) == (1, 4, 1)


async def test_context_manager_returns_processor_and_never_swallows_exceptions() -> None:
    processor = make_processor()

    async def use() -> None:
        async with processor as entered:
            assert entered is processor
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await use()


# --------------------------------------------------------------------------- dry run


async def test_dry_run_uses_the_strategy_dry_run_and_never_executes() -> None:
    strategy = ScriptedStrategy()
    prompt = "Summarise this rather long document about the history of the printing press"
    processor = make_processor(config=make_config(dry_run=True))
    result = await run_batch(processor, items(strategy, prompt))
    (only,) = result.results
    assert only.success is True
    assert only.output == "[DRY-RUN] Mock output for prompt: " + prompt[:50] + "..."
    assert only.token_usage == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
    assert strategy.calls == []
    assert strategy.prepared == 1  # prepare still runs in dry-run mode


async def test_dry_run_short_prompt_still_gets_the_ellipsis() -> None:
    processor = make_processor(config=make_config(dry_run=True))
    result = await run_batch(processor, items(ScriptedStrategy(), "hi"))
    assert result.results[0].output == "[DRY-RUN] Mock output for prompt: hi..."


async def test_dry_run_is_not_time_limited() -> None:
    class SlowDryRun(ScriptedStrategy):
        async def dry_run(self, prompt: str) -> tuple[str, TokenUsage]:
            await asyncio.sleep(0.03)
            return "dry", {}

    processor = make_processor(config=make_config(dry_run=True, timeout_per_item=0.005))
    result = await run_batch(processor, items(SlowDryRun(), "a"))
    assert result.results[0].output == "dry"


# --------------------------------------------------------------------------- cancellation (D10)


async def _started_calls(strategy: ScriptedStrategy, count: int) -> None:
    await wait_all_tasks_blocked()
    assert len(strategy.calls) == count


async def test_cancelling_process_all_stops_every_worker() -> None:
    before = asyncio.all_tasks()
    gate = asyncio.Event()  # never set: calls hang until cancelled
    strategy = ScriptedStrategy(gate=gate)
    processor = make_processor(config=make_config(max_workers=2))
    async with processor:
        await add_all(processor, items(strategy, *[f"i{n}" for n in range(6)]))
        task = asyncio.create_task(processor.process_all())
        await _started_calls(strategy, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_all_tasks_blocked()
        assert len(strategy.calls) == 2  # no call started after the cancellation
        assert strategy.log.count("cancelled:i0") == 1
        assert strategy.log.count("cancelled:i1") == 1
        assert asyncio.all_tasks() == before
    # Strategy cleanup ran after the last in-flight call had ended.
    assert strategy.log[-1] == "cleanup"
    assert strategy.log.index("cleanup") > strategy.log.index("cancelled:i1")


async def test_wait_for_timeout_cancels_the_batch() -> None:
    before = asyncio.all_tasks()
    strategy = ScriptedStrategy(gate=asyncio.Event())
    processor = make_processor(config=make_config(max_workers=3))
    async with processor:
        await add_all(processor, items(strategy, *[f"i{n}" for n in range(5)]))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(processor.process_all(), timeout=0.05)
        calls = len(strategy.calls)
        assert 1 <= calls <= 3  # normally 3; fewer only if the machine stalled for 50 ms
        # Every call that had started was cancelled; none ended normally.
        assert sum(entry.startswith("cancelled:") for entry in strategy.log) == calls
        assert not [entry for entry in strategy.log if entry.startswith("end:")]
        await asyncio.sleep(0.01)
        assert len(strategy.calls) == calls
        assert asyncio.all_tasks() == before
    assert strategy.log[-1] == "cleanup"


async def test_cancellation_during_a_cooldown_resumes_and_stops_workers(
    fake_clock: FakeClock,
) -> None:
    before = asyncio.all_tasks()
    strategy = ScriptedStrategy({"rl": [RateLimitError()]}, clock=fake_clock, latency=1.0)
    processor = make_processor(fake_clock, config=make_config(max_workers=2))
    await add_all(processor, items(strategy, "rl", "a", "b", "c"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(3.0)  # rl failed at t=1 and started an 8 s cooldown
    assert processor._cooldown.paused
    calls = len(strategy.calls)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not processor._cooldown.paused
    await fake_clock.advance(60.0)
    assert len(strategy.calls) == calls
    assert asyncio.all_tasks() == before


async def test_cancellation_during_a_retry_wait_starts_no_more_calls(
    fake_clock: FakeClock,
) -> None:
    before = asyncio.all_tasks()
    strategy = ScriptedStrategy({"a": [ConnectionError("reset")]}, clock=fake_clock)
    processor = make_processor(fake_clock)
    await add_all(processor, items(strategy, "a", "b"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(0.5)  # attempt 1 failed at t=0; retry due at t=1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_clock.advance(10.0)
    assert len(strategy.calls) == 1
    assert asyncio.all_tasks() == before


async def test_cancellation_leaves_no_progress_callback_task_behind() -> None:
    before = asyncio.all_tasks()
    callback_cancelled = asyncio.Event()

    async def progress(done: int, total: int, item_id: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            callback_cancelled.set()
            raise

    gate = asyncio.Event()
    strategy = ScriptedStrategy({"a": ["fast"]})

    class SecondHangs(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            await gate.wait()
            return "never", {}

    processor = make_processor(
        config=make_config(progress_interval=1, progress_callback_timeout=None),
        progress_callback=progress,
    )
    await add_all(processor, [*items(strategy, "a"), *items(SecondHangs(), "b")])
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()  # a done (callback running), b hanging
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_all_tasks_blocked()
    assert callback_cancelled.is_set()
    assert asyncio.all_tasks() == before


async def test_items_added_from_many_tasks_are_all_processed() -> None:
    processor = make_processor(config=make_config(max_workers=4))
    strategy = ScriptedStrategy()
    work: list[LLMWorkItem[str, str, Any]] = items(strategy, *[f"i{n}" for n in range(20)])
    await asyncio.gather(*(processor.add_work(item) for item in work))
    result = await processor.process_all()
    assert sorted(r.item_id for r in result.results) == sorted(i.item_id for i in work)
