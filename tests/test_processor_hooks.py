"""Hooks around items: middleware (§4.10), observer isolation (§4.11), the post-processor
(§4.12) and the progress callback (§4.13)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

import async_batch_llm._internal.batch as batch_module
import async_batch_llm._internal.processor as processor_module
from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    LLMWorkItem,
    ProcessingEvent,
    WorkItemResult,
)
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked
from tests.conftest import (
    EventRecorder,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)

Item = LLMWorkItem[str, str, Any]
Result = WorkItemResult[str, Any]


class Logging(BaseMiddleware[str, str, Any]):
    """Appends ``<name>.<hook>`` to a shared log; optionally rewrites the prompt."""

    def __init__(self, name: str, log: list[str], suffix: str = "") -> None:
        self.name = name
        self.log = log
        self.suffix = suffix

    async def before_process(self, work_item: Item) -> Item | None:
        self.log.append(f"{self.name}.before")
        if self.suffix:
            return replace(work_item, prompt=work_item.prompt + self.suffix)
        return work_item

    async def after_process(self, result: Result) -> Result:
        self.log.append(f"{self.name}.after")
        return result

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        self.log.append(f"{self.name}.on_error:{type(error).__name__}")
        return None


# --------------------------------------------------------------------------- middleware


async def test_middleware_order_is_an_onion() -> None:
    log: list[str] = []
    strategy = ScriptedStrategy()
    processor = make_processor(middlewares=[Logging("A", log), Logging("B", log)])
    await run_batch(processor, items(strategy, "a"))
    assert log == ["A.before", "B.before", "B.after", "A.after"]


async def test_before_process_chain_passes_each_return_value_on() -> None:
    log: list[str] = []
    strategy = ScriptedStrategy()
    processor = make_processor(
        middlewares=[Logging("A", log, suffix="+A"), Logging("B", log, suffix="+B")]
    )
    result = await run_batch(processor, items(strategy, "p"))
    assert strategy.calls[0].prompt == "p+A+B"
    assert result.results[0].item_id == "p"


async def test_before_process_runs_on_every_attempt(fake_clock: FakeClock) -> None:
    log: list[str] = []
    strategy = ScriptedStrategy({"a": [ConnectionError("x"), ConnectionError("y")]})
    processor = make_processor(fake_clock, middlewares=[Logging("A", log)])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert log == ["A.before", "A.before", "A.before", "A.after"]


class Skipper(BaseMiddleware[str, str, Any]):
    def __init__(self) -> None:
        self.after_calls = 0

    async def before_process(self, work_item: Item) -> Item | None:
        return None

    async def after_process(self, result: Result) -> Result:
        self.after_calls += 1
        return result


async def test_skip_result_is_exact_and_never_retried() -> None:
    skipper = Skipper()
    strategy = ScriptedStrategy()
    context = {"k": "v"}
    processor = make_processor(middlewares=[skipper])
    result = await run_batch(processor, items(strategy, "a", context=context))
    (only,) = result.results
    assert only == WorkItemResult(
        item_id="a",
        success=False,
        error="Skipped by middleware",
        context=context,
        token_usage={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    )
    assert strategy.calls == []
    assert skipper.after_calls == 0


async def test_skip_stops_the_before_chain() -> None:
    log: list[str] = []
    processor = make_processor(middlewares=[Skipper(), Logging("B", log)])
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert log == []


async def test_raising_middleware_is_logged_and_the_chain_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Explodes(BaseMiddleware[str, str, Any]):
        async def before_process(self, work_item: Item) -> Item | None:
            raise RuntimeError("before exploded")

        async def after_process(self, result: Result) -> Result:
            raise RuntimeError("after exploded")

    log: list[str] = []
    strategy = ScriptedStrategy()
    processor = make_processor(middlewares=[Explodes(), Logging("B", log, suffix="+B")])
    result = await run_batch(processor, items(strategy, "p"))
    assert result.results[0].success is True
    assert strategy.calls[0].prompt == "p+B"  # B received the item as it was
    assert log == ["B.before", "B.after"]
    assert "before exploded" in caplog.text
    assert "after exploded" in caplog.text


async def test_after_process_can_replace_the_result() -> None:
    class Upper(BaseMiddleware[str, str, Any]):
        async def after_process(self, result: Result) -> Result:
            return replace(result, output=(result.output or "").upper())

    processor = make_processor(middlewares=[Upper()])
    result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert result.results[0].output == "OK:A"


class Supplies(BaseMiddleware[str, str, Any]):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        self.log.append(f"{self.name}.on_error")
        return WorkItemResult(item_id=work_item.item_id, success=True, output=f"{self.name}-fix")


async def test_on_error_first_non_none_wins_and_raisers_are_skipped() -> None:
    class Raises(BaseMiddleware[str, str, Any]):
        async def on_error(self, work_item: Item, error: Exception) -> Result | None:
            log.append("R.on_error")
            raise RuntimeError("on_error exploded")

    log: list[str] = []
    strategy = ScriptedStrategy({"a": [ValueError("bad")]})
    processor = make_processor(
        middlewares=[Logging("A", log), Raises(), Supplies(log, "S"), Supplies(log, "T")]
    )
    result = await run_batch(processor, items(strategy, "a"))
    assert result.results[0].success is True
    assert result.results[0].output == "S-fix"
    assert [e for e in log if "on_error" in e] == [
        "A.on_error:ValueError",
        "R.on_error",
        "S.on_error",
    ]


async def test_on_error_is_not_invoked_for_errors_that_will_be_retried(
    fake_clock: FakeClock,
) -> None:
    log: list[str] = []
    strategy = ScriptedStrategy({"a": [ConnectionError("x"), ConnectionError("y")]})
    processor = make_processor(fake_clock, middlewares=[Logging("A", log)])
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].success is True
    assert not [entry for entry in log if "on_error" in entry]


async def test_on_error_is_invoked_once_when_retries_are_exhausted(fake_clock: FakeClock) -> None:
    log: list[str] = []
    strategy = ScriptedStrategy({"a": [ConnectionError("x"), OSError("y"), TimeoutError("z")]})
    processor = make_processor(fake_clock, middlewares=[Logging("A", log)])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert [entry for entry in log if "on_error" in entry] == ["A.on_error:TimeoutError"]


async def test_on_error_result_replaces_an_exhausted_failure(fake_clock: FakeClock) -> None:
    log: list[str] = []
    strategy = ScriptedStrategy({"a": [ConnectionError("x")] * 3})
    processor = make_processor(fake_clock, middlewares=[Supplies(log, "S")])
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].output == "S-fix"
    assert log == ["S.on_error"]


# --------------------------------------------------------------------------- observers


class Raising(BaseObserver):
    def __init__(self) -> None:
        self.calls = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError(f"observer broke on {event.name}")


class Hanging(BaseObserver):
    def __init__(self) -> None:
        self.cancelled = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def _reference_events() -> list[tuple[ProcessingEvent, dict[str, Any]]]:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"b": [ValueError("bad")]})
    await run_batch(make_processor(observers=[recorder]), items(strategy, "a", "b"))
    return recorder.events


def _without_timing(
    events: list[tuple[ProcessingEvent, dict[str, Any]]],
) -> list[tuple[ProcessingEvent, dict[str, Any]]]:
    timing = {"duration", "start_time"}
    return [(kind, {k: v for k, v in data.items() if k not in timing}) for kind, data in events]


async def test_raising_observer_loses_nothing() -> None:
    raising, recorder = Raising(), EventRecorder()
    strategy = ScriptedStrategy({"b": [ValueError("bad")]})
    processor = make_processor(observers=[raising, recorder])
    result = await run_batch(processor, items(strategy, "a", "b"))
    assert [(r.item_id, r.success) for r in result.results] == [("a", True), ("b", False)]
    # BATCH_STARTED, WORKER_STARTED, ITEM_STARTED, ITEM_COMPLETED, ITEM_STARTED, ITEM_FAILED,
    # WORKER_STOPPED, BATCH_COMPLETED.
    assert raising.calls == len(recorder.events) == 8
    assert _without_timing(recorder.events) == _without_timing(await _reference_events())


async def test_hanging_observer_times_out_and_others_get_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processor_module, "OBSERVER_CALLBACK_TIMEOUT", 0.002)
    hanging, recorder = Hanging(), EventRecorder()
    strategy = ScriptedStrategy({"b": [ValueError("bad")]})
    processor = make_processor(observers=[hanging, recorder])
    result = await run_batch(processor, items(strategy, "a", "b"))
    assert [(r.item_id, r.success) for r in result.results] == [("a", True), ("b", False)]
    assert hanging.cancelled == len(recorder.events) == 8
    assert _without_timing(recorder.events) == _without_timing(await _reference_events())


async def test_observers_are_called_in_list_order() -> None:
    log: list[str] = []

    class Named(BaseObserver):
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
            log.append(f"{self.name}:{event.name}")

    processor = make_processor(observers=[Named("1"), Named("2")])
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert log[:4] == ["1:BATCH_STARTED", "2:BATCH_STARTED", "1:WORKER_STARTED", "2:WORKER_STARTED"]
    assert len(log) == 12


# --------------------------------------------------------------------------- post-processor


async def test_sync_post_processor_sees_every_result_including_failures() -> None:
    seen: list[tuple[str, bool]] = []
    strategy = ScriptedStrategy({"b": [ValueError("bad")]})
    processor = make_processor(post_processor=lambda r: seen.append((r.item_id, r.success)))
    result = await run_batch(processor, items(strategy, "a", "b", "c"))
    assert seen == [("a", True), ("b", False), ("c", True)]
    assert result.total_items == 3


async def test_async_post_processor_finishes_before_process_all_returns() -> None:
    seen: list[str] = []

    async def post(result: Result) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(result.item_id)

    strategy = ScriptedStrategy({"b": [ValueError("bad")]})
    processor = make_processor(config=make_config(max_workers=2), post_processor=post)
    await run_batch(processor, items(strategy, "a", "b", "c", "d"))
    assert sorted(seen) == ["a", "b", "c", "d"]


async def test_post_processor_runs_after_the_result_is_recorded() -> None:
    snapshots: list[tuple[str, int]] = []
    processor = make_processor()

    async def post(result: Result) -> None:
        snapshots.append((result.item_id, (await processor.get_stats())["processed"]))

    processor.post_processor = post
    await run_batch(processor, items(ScriptedStrategy(), "a", "b"))
    assert snapshots == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_post_processor_exceptions_are_swallowed(is_async: bool) -> None:
    def sync_post(result: Result) -> None:
        raise RuntimeError("post failed")

    async def async_post(result: Result) -> None:
        raise RuntimeError("post failed")

    processor = make_processor(post_processor=async_post if is_async else sync_post)
    result = await run_batch(processor, items(ScriptedStrategy(), "a", "b"))
    assert [(r.item_id, r.success, r.output) for r in result.results] == [
        ("a", True, "ok:a"),
        ("b", True, "ok:b"),
    ]
    stats = await processor.get_stats()
    assert (stats["succeeded"], stats["failed"]) == (2, 0)


async def test_hanging_async_post_processor_is_abandoned_after_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "POST_PROCESSOR_EXECUTION_TIMEOUT", 0.002)

    async def post(result: Result) -> None:
        await asyncio.Event().wait()

    processor = make_processor(post_processor=post)
    result = await run_batch(processor, items(ScriptedStrategy(), "a", "b"))
    assert result.succeeded == 2


# --------------------------------------------------------------------------- progress callback


async def test_progress_fires_at_multiples_of_the_interval() -> None:
    calls: list[tuple[int, int, str]] = []

    async def progress(done: int, total: int, item_id: str) -> None:
        calls.append((done, total, item_id))

    processor = make_processor(config=make_config(progress_interval=2), progress_callback=progress)
    await run_batch(processor, items(ScriptedStrategy(), *[f"i{n}" for n in range(5)]))
    assert calls == [(2, 5, "i1"), (4, 5, "i3")]


async def test_progress_interval_defaults_to_ten() -> None:
    calls: list[int] = []

    async def progress(done: int, total: int, item_id: str) -> None:
        calls.append(done)

    processor = make_processor(progress_callback=progress)
    assert processor.config.progress_interval == 10
    await run_batch(processor, items(ScriptedStrategy(), *[f"i{n}" for n in range(25)]))
    assert calls == [10, 20]


async def test_sync_progress_callback_runs_in_a_thread_and_has_begun_on_return() -> None:
    threads: list[int] = []

    def progress(done: int, total: int, item_id: str) -> None:
        threads.append(threading.get_ident())

    processor = make_processor(config=make_config(progress_interval=1), progress_callback=progress)
    await run_batch(processor, items(ScriptedStrategy(), *[f"i{n}" for n in range(10)]))
    # Begun before process_all returned: their first effects are visible to the caller.
    assert len(threads) == 10
    assert threading.get_ident() not in threads


async def test_async_progress_callback_runs_as_its_own_task_and_has_begun_on_return() -> None:
    begun: list[asyncio.Task[Any] | None] = []
    release = asyncio.Event()

    async def progress(done: int, total: int, item_id: str) -> None:
        begun.append(asyncio.current_task())
        await release.wait()

    processor = make_processor(
        config=make_config(progress_interval=1, progress_callback_timeout=None),
        progress_callback=progress,
    )
    async with processor:
        await add_all(processor, items(ScriptedStrategy(), "a", "b"))
        runner = asyncio.ensure_future(processor.process_all())
        result = await runner
        assert result.succeeded == 2
        assert len(begun) == 2  # begun, though still running
        assert all(task is not None and task is not runner for task in begun)
        release.set()


async def test_callable_object_with_async_call_runs_as_a_task() -> None:
    class Progress:
        def __init__(self) -> None:
            self.threads: list[int] = []

        async def __call__(self, done: int, total: int, item_id: str) -> None:
            self.threads.append(threading.get_ident())

    progress = Progress()
    processor = make_processor(config=make_config(progress_interval=1), progress_callback=progress)
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert progress.threads == [threading.get_ident()]


async def test_progress_callback_exceptions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def progress(done: int, total: int, item_id: str) -> None:
        raise RuntimeError("progress exploded")

    processor = make_processor(config=make_config(progress_interval=1), progress_callback=progress)
    result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    await wait_all_tasks_blocked()
    assert result.succeeded == 1
    assert "progress exploded" in caplog.text


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_slow_progress_callback_does_not_delay_the_batch(is_async: bool) -> None:
    # Real time, wide margins: the callback takes 0.2 s, its timeout is 0.05 s.
    def slow_sync(done: int, total: int, item_id: str) -> None:
        time.sleep(0.2)

    async def slow_async(done: int, total: int, item_id: str) -> None:
        await asyncio.sleep(0.2)

    processor = make_processor(
        config=make_config(progress_interval=1, progress_callback_timeout=0.05),
        progress_callback=slow_async if is_async else slow_sync,
    )
    started = time.perf_counter()
    result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert time.perf_counter() - started < 0.15
    assert result.succeeded == 1
    await processor.cleanup()


async def test_progress_callback_is_cancelled_after_its_timeout() -> None:
    cancelled = asyncio.Event()

    async def progress(done: int, total: int, item_id: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    processor = make_processor(
        config=make_config(progress_interval=1, progress_callback_timeout=0.01),
        progress_callback=progress,
    )
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    await asyncio.wait_for(cancelled.wait(), timeout=2.0)


@pytest.mark.parametrize("how", ["cleanup", "shutdown", "context-exit"])
async def test_pending_progress_callbacks_are_cancelled_by_cleanup(how: str) -> None:
    cancelled: list[str] = []

    async def progress(done: int, total: int, item_id: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(item_id)
            raise

    processor = make_processor(
        config=make_config(progress_interval=1, progress_callback_timeout=None),
        progress_callback=progress,
    )
    async with processor:
        await run_batch(processor, items(ScriptedStrategy(), "a", "b"))
        await wait_all_tasks_blocked()
        assert cancelled == []
        if how == "cleanup":
            await processor.cleanup()
        elif how == "shutdown":
            await processor.shutdown()
    assert sorted(cancelled) == ["a", "b"]
