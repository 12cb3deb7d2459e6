"""Cancelling ``process_all()`` stops the batch, wherever its workers are (guarantee G6, spec D10).

Each scenario parks the workers somewhere (in provider calls, in a cooldown, in a backoff wait,
in slow start, in the request limiter, in a post-processor, in an observer, in ``prepare()``),
then cancels the task running the batch, by ``task.cancel()`` or by ``asyncio.wait_for``. The
third way, Ctrl-C under ``asyncio.run``, is exercised on a real child process in
``test_sigint.py``.

After the cancellation: it was re-raised; it took well under a second; no provider call started
after it; every in-flight call was cancelled and had ended before strategy cleanup started;
strategy cleanup ran exactly once; no task is left pending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    ProcessorObserver,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked

from ._support import assert_no_pending_tasks

USAGE: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
WORKERS = 4
ITEMS = 40
CANCEL_DEADLINE = 1.0  # real seconds a cancellation may take, with a wide margin


@dataclass
class Timeline:
    """Ordered record of calls and cleanup, on one sequence counter."""

    seq: int = 0
    starts: list[tuple[int, str]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    cancelled_calls: int = 0
    in_flight: int = 0
    cleanups: list[tuple[int, int]] = field(default_factory=list)  # (seq, in_flight at cleanup)
    cancel_seq: int | None = None

    def tick(self) -> int:
        self.seq += 1
        return self.seq


Behaviour = Callable[[str, int], Awaitable[tuple[str, TokenUsage]]]


async def hang(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def succeed(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
    return prompt, USAGE


async def rate_limited(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
    raise RuntimeError("429 Too Many Requests")


async def connection_reset(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
    raise ConnectionError("connection reset by peer")


class Probe(LLMCallStrategy[str]):
    def __init__(self, behaviour: Behaviour, timeline: Timeline, *, hang_prepare: bool = False):
        self.behaviour = behaviour
        self.timeline = timeline
        self.hang_prepare = hang_prepare

    async def prepare(self) -> None:
        if self.hang_prepare:
            await asyncio.Event().wait()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        t = self.timeline
        t.starts.append((t.tick(), prompt))
        t.in_flight += 1
        try:
            return await self.behaviour(prompt, attempt)
        except asyncio.CancelledError:
            t.cancelled_calls += 1
            raise
        finally:
            t.in_flight -= 1
            t.ends.append(t.tick())

    async def cleanup(self) -> None:
        t = self.timeline
        t.cleanups.append((t.tick(), t.in_flight))


class HangOn(ProcessorObserver):
    def __init__(self, event: ProcessingEvent) -> None:
        self.event = event
        self.entered = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is self.event:
            self.entered += 1
            await asyncio.Event().wait()


@dataclass
class Scenario:
    """How to park the workers, and how to tell they are parked."""

    behaviour: Behaviour
    parked: Callable[[Timeline, FakeClock, dict[str, Any]], bool]
    config: dict[str, Any] = field(default_factory=dict)
    hang_prepare: bool = False
    observer: ProcessingEvent | None = None
    hang_post_processor: bool = False
    hang_progress: bool = False
    expect_in_flight: int = 0


def _config(**overrides: Any) -> ProcessorConfig:
    settings: dict[str, Any] = {
        "max_workers": WORKERS,
        "timeout_per_item": 600.0,
        "retry": RetryConfig(max_attempts=3, initial_wait=30.0, max_wait=60.0),
        "rate_limit": RateLimitConfig(cooldown_seconds=120.0, slow_start_items=10),
    }
    settings.update(overrides)
    return ProcessorConfig(**settings)


def first_items_succeed_then(rest: Behaviour, ok: int) -> Behaviour:
    async def behaviour(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
        if int(prompt.rsplit("-", 1)[1]) < ok:
            return await succeed(prompt, attempt)
        return await rest(prompt, attempt)

    return behaviour


async def rate_limit_item_0_once(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
    if prompt == "item-0" and attempt == 1:
        return await rate_limited(prompt, attempt)
    return await succeed(prompt, attempt)


SCENARIOS: dict[str, Scenario] = {
    "in-flight-calls": Scenario(
        hang, lambda t, c, x: t.in_flight == WORKERS, expect_in_flight=WORKERS
    ),
    "cooldown": Scenario(
        rate_limited, lambda t, c, x: c.pending_sleepers == 1 and t.in_flight == 0
    ),
    "retry-backoff-wait": Scenario(connection_reset, lambda t, c, x: c.pending_sleepers == WORKERS),
    "slow-start-delay": Scenario(
        # item-0 hits one rate limit; after the cooldown every new item gets a slow-start delay.
        rate_limit_item_0_once,
        # Cooldown over: item-0 waits out its backoff, every other worker a slow-start delay.
        lambda t, c, x: c.time() >= 120.0 and c.pending_sleepers >= WORKERS,
        config={"retry": RetryConfig(max_attempts=3, initial_wait=1000.0, max_wait=1000.0)},
    ),
    "request-limiter": Scenario(
        succeed,
        lambda t, c, x: len(t.starts) == 2 and c.pending_sleepers >= 1,
        config={"max_requests_per_minute": 2.0},
    ),
    "post-processor": Scenario(
        succeed, lambda t, c, x: x["post_entered"] == WORKERS, hang_post_processor=True
    ),
    "observer": Scenario(
        succeed,
        lambda t, c, x: x["observer"].entered == WORKERS,
        observer=ProcessingEvent.ITEM_COMPLETED,
    ),
    "prepare": Scenario(hang, lambda t, c, x: True, hang_prepare=True),
    "pending-progress-callbacks": Scenario(
        first_items_succeed_then(hang, ok=8),
        lambda t, c, x: x["progress_entered"] >= 1 and t.in_flight == WORKERS,
        config={"progress_interval": 1, "progress_callback_timeout": None},
        hang_progress=True,
        expect_in_flight=WORKERS,
    ),
}


async def park_then_cancel(
    name: str, how: str, *, use_context_manager: bool = True
) -> tuple[Timeline, ParallelBatchProcessor[str, str, None], float]:
    scenario = SCENARIOS[name]
    timeline = Timeline()
    clock = FakeClock()
    extra: dict[str, Any] = {"post_entered": 0, "progress_entered": 0}
    strategy = Probe(scenario.behaviour, timeline, hang_prepare=scenario.hang_prepare)

    async def post(result: WorkItemResult[str, None]) -> None:
        if scenario.hang_post_processor:
            extra["post_entered"] += 1
            await asyncio.Event().wait()

    async def progress(done: int, total: int, item_id: str) -> None:
        extra["progress_entered"] += 1
        await asyncio.Event().wait()

    observers: list[ProcessorObserver] = []
    if scenario.observer is not None:
        extra["observer"] = HangOn(scenario.observer)
        observers.append(extra["observer"])
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=_config(**scenario.config),
        post_processor=post,
        observers=observers,
        progress_callback=progress if scenario.hang_progress else None,
        clock=clock,
    )
    for i in range(ITEMS):
        await processor.add_work(
            LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt=f"item-{i}")
        )

    async def run() -> None:
        if use_context_manager:
            async with processor:
                await processor.process_all()
        else:
            await processor.process_all()

    if how == "task.cancel":
        task = asyncio.create_task(run())
        await settle(scenario, timeline, clock, extra)
        timeline.cancel_seq = timeline.tick()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), CANCEL_DEADLINE * 5)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    else:
        # wait_for's deadline is real time; by then the workers are long parked on the fake
        # clock or on calls that never return.
        async def mark_when_parked() -> None:
            await settle(scenario, timeline, clock, extra)

        watcher = asyncio.create_task(mark_when_parked())
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run(), timeout=0.3)
        assert watcher.done()
        watcher.result()
        started += 0.3
        timeline.cancel_seq = timeline.cancel_seq or 0
    elapsed = time.monotonic() - started
    # Strictly, without yielding: nothing the processor started is still pending.
    assert_no_pending_tasks()
    return timeline, processor, elapsed


async def settle(
    scenario: Scenario, timeline: Timeline, clock: FakeClock, extra: dict[str, Any]
) -> None:
    """Let the batch run (virtual time frozen) until the scenario says the workers are parked."""
    for _ in range(300):
        await wait_all_tasks_blocked()
        if scenario.parked(timeline, clock, extra):
            # Record the last sequence number before the cancellation can be delivered.
            timeline.cancel_seq = timeline.tick()
            return
        # Let one virtual second pass (a cooldown or a wait may end) and look again.
        await clock.advance(1.0)
    raise AssertionError(f"workers never parked: {timeline}, {clock!r}")


def assert_stopped_cleanly(
    timeline: Timeline, elapsed: float, scenario: Scenario, *, cleaned_up: bool
) -> None:
    assert elapsed < CANCEL_DEADLINE, f"cancellation took {elapsed:.2f}s"
    assert timeline.cancel_seq is not None
    late = [prompt for seq, prompt in timeline.starts if seq > timeline.cancel_seq]
    assert late == [], f"provider calls started after the cancellation: {late}"
    assert timeline.in_flight == 0
    assert len(timeline.ends) == len(timeline.starts)
    assert timeline.cancelled_calls == scenario.expect_in_flight
    if cleaned_up and not scenario.hang_prepare:
        assert len(timeline.cleanups) == 1, timeline.cleanups
        cleanup_seq, in_flight_at_cleanup = timeline.cleanups[0]
        assert in_flight_at_cleanup == 0
        assert all(end < cleanup_seq for end in timeline.ends)
    elif not cleaned_up:
        assert timeline.cleanups == []


@pytest.mark.parametrize("how", ["task.cancel", "wait_for"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_cancelling_process_all_stops_the_batch(name: str, how: str) -> None:
    timeline, processor, elapsed = await park_then_cancel(name, how)
    assert_stopped_cleanly(timeline, elapsed, SCENARIOS[name], cleaned_up=True)
    # The processor is finished: it refuses more work rather than running it.
    with pytest.raises(RuntimeError, match="Cannot add work after process_all"):
        await processor.add_work(
            LLMWorkItem(item_id="late", strategy=Probe(succeed, Timeline()), prompt="late")
        )


@pytest.mark.parametrize("name", ["in-flight-calls", "pending-progress-callbacks", "cooldown"])
async def test_cancelled_process_all_leaves_no_task_even_without_async_with(name: str) -> None:
    timeline, processor, elapsed = await park_then_cancel(
        name, "task.cancel", use_context_manager=False
    )
    assert_stopped_cleanly(timeline, elapsed, SCENARIOS[name], cleaned_up=False)
    # Strategy cleanup is the job of shutdown() / async with (spec §4.9); it still works after.
    await processor.shutdown()
    if name != "prepare":
        assert len(timeline.cleanups) == 1
        assert timeline.cleanups[0][1] == 0


async def test_a_second_cancel_during_shutdown_still_leaves_nothing_running() -> None:
    timeline = Timeline()
    cleanup_entered = asyncio.Event()

    class SlowCleanup(Probe):
        async def cleanup(self) -> None:
            cleanup_entered.set()
            await asyncio.Event().wait()

    strategy = SlowCleanup(hang, timeline)
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=_config(), clock=FakeClock()
    )
    for i in range(ITEMS):
        await processor.add_work(LLMWorkItem(item_id=f"i-{i}", strategy=strategy, prompt=f"i-{i}"))

    async def run() -> None:
        async with processor:
            await processor.process_all()

    task = asyncio.create_task(run())
    while timeline.in_flight < WORKERS:
        await wait_all_tasks_blocked()
    task.cancel()
    await cleanup_entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert timeline.in_flight == 0
    assert len(timeline.starts) == WORKERS
    assert_no_pending_tasks()
