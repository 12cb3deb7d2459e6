"""Faulty hooks never lose a result, flip a good item, hang the batch or starve observers (G5).

Every scenario runs a scripted batch with provider faults (see ``_support``) while one kind of
user hook misbehaves: it raises, or it never returns. The batch must still match its oracle item
by item (outcomes, call counts, tokens), finish within a real-time bound, deliver every event to
the well-behaved observer placed after the faulty ones, and leave no task pending.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    ExponentialBackoffStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorObserver,
    RateLimitStrategy,
    RetryState,
    WorkItemResult,
)
from async_batch_llm._internal import batch as batch_module
from async_batch_llm._internal import processor as processor_module

from ._support import (
    ScriptedStrategy,
    Step,
    assert_batch_matches_oracle,
    make_plans,
    run_scripted_batch,
    scripted_config,
)

HOOK_LIMIT = 0.02  # real seconds the tests allow a hanging hook before it is abandoned
BATCH_BOUND = 20.0  # real seconds within which every faulty-hook batch must finish


class HookFault(Exception):
    """What the raising hooks raise."""


async def never_return() -> None:
    await asyncio.Event().wait()


# ----------------------------------------------------------------------------- hooks


class RaisingObserver(ProcessorObserver):
    def __init__(self) -> None:
        self.calls = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls += 1
        raise HookFault(f"observer broke on {event.name}")


class HangingObserver(ProcessorObserver):
    def __init__(self) -> None:
        self.calls = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls += 1
        await never_return()


class SyncObserver(ProcessorObserver):
    """A mistake users make: ``on_event`` written without ``async``."""

    def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:  # type: ignore[override]  # deliberately not async
        pass


class FaultyMiddleware(BaseMiddleware[str, str, Any]):
    def __init__(self, where: str, how: str) -> None:
        self.where = where
        self.how = how
        self.calls: Counter[str] = Counter()

    async def _fault(self, hook: str) -> None:
        self.calls[hook] += 1
        if hook == self.where:
            if self.how == "raise":
                raise HookFault(f"middleware {hook} broke")
            await never_return()

    async def before_process(
        self, work_item: LLMWorkItem[str, str, Any]
    ) -> LLMWorkItem[str, str, Any] | None:
        await self._fault("before_process")
        return work_item

    async def after_process(self, result: WorkItemResult[str, Any]) -> WorkItemResult[str, Any]:
        await self._fault("after_process")
        return result

    async def on_error(
        self, work_item: LLMWorkItem[str, str, Any], error: Exception
    ) -> WorkItemResult[str, Any] | None:
        await self._fault("on_error")
        return None


class FaultyStrategy(ScriptedStrategy):
    """The scripted provider, with a strategy ``on_error`` or ``cleanup`` that misbehaves."""

    def __init__(self, *args: Any, on_error: str = "", cleanup: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_error_mode = on_error
        self.cleanup_mode = cleanup
        self.on_error_calls = 0

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.on_error_calls += 1
        if self.on_error_mode == "raise":
            raise HookFault("strategy on_error broke")
        if self.on_error_mode == "hang":
            await never_return()

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.cleanup_mode == "raise":
            raise HookFault("strategy cleanup broke")
        if self.cleanup_mode == "hang":
            await never_return()


class FaultyRateLimitStrategy(RateLimitStrategy):
    def __init__(self, where: str) -> None:
        self.where = where
        self.inner = ExponentialBackoffStrategy(initial_cooldown=60.0, slow_start_items=5)
        self.calls: Counter[str] = Counter()

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        self.calls["on_rate_limit"] += 1
        if self.where == "on_rate_limit":
            raise HookFault("rate-limit strategy broke")
        return await self.inner.on_rate_limit(worker_id, consecutive_limit_count)

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        self.calls["should_apply_slow_start"] += 1
        if self.where == "should_apply_slow_start":
            raise HookFault("slow start broke")
        return self.inner.should_apply_slow_start(items_since_resume)


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Hooks:
    """The faulty hooks of one scenario, and what must be true about them afterwards."""

    observers: list[ProcessorObserver] = field(default_factory=list)
    middlewares: list[FaultyMiddleware] = field(default_factory=list)
    post_processor: Callable[[WorkItemResult[str, Any]], Any] | None = None
    progress_callback: Callable[[int, int, str], Any] | None = None
    progress_callback_timeout: float | None = 5.0
    strategy_on_error: str = ""
    strategy_cleanup: str = ""
    rate_limit_strategy: FaultyRateLimitStrategy | None = None
    post_counter: Counter[str] = field(default_factory=Counter)
    progress_calls: list[int] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def post_sync_raise(hooks: Hooks) -> None:
    def post(result: WorkItemResult[str, Any]) -> None:
        hooks.post_counter[result.item_id] += 1
        raise HookFault("sync post-processor broke")

    hooks.post_processor = post


def post_async_raise(hooks: Hooks) -> None:
    async def post(result: WorkItemResult[str, Any]) -> None:
        hooks.post_counter[result.item_id] += 1
        raise HookFault("async post-processor broke")

    hooks.post_processor = post


def post_async_hang(hooks: Hooks) -> None:
    async def post(result: WorkItemResult[str, Any]) -> None:
        hooks.post_counter[result.item_id] += 1
        await never_return()

    hooks.post_processor = post


def post_flips_result(hooks: Hooks) -> None:
    """A post-processor that vandalises the result it is shown, then raises."""

    def post(result: WorkItemResult[str, Any]) -> None:
        hooks.post_counter[result.item_id] += 1
        raise HookFault("post-processor broke after reading")

    hooks.post_processor = post


def progress_async_raise(hooks: Hooks) -> None:
    async def progress(done: int, total: int, item_id: str) -> None:
        hooks.progress_calls.append(done)
        raise HookFault("async progress callback broke")

    hooks.progress_callback = progress


def progress_sync_raise(hooks: Hooks) -> None:
    def progress(done: int, total: int, item_id: str) -> None:
        hooks.progress_calls.append(done)
        raise HookFault("sync progress callback broke")

    hooks.progress_callback = progress


def progress_async_hang_with_limit(hooks: Hooks) -> None:
    async def progress(done: int, total: int, item_id: str) -> None:
        hooks.progress_calls.append(done)
        await never_return()

    hooks.progress_callback = progress
    hooks.progress_callback_timeout = HOOK_LIMIT


def progress_async_hang_without_limit(hooks: Hooks) -> None:
    progress_async_hang_with_limit(hooks)
    hooks.progress_callback_timeout = None


def progress_sync_hang(hooks: Hooks) -> None:
    # A thread cannot be stopped: it is released at the end of the test (the processor only
    # abandons its task), so that the event loop's executor can shut down.
    def progress(done: int, total: int, item_id: str) -> None:
        hooks.progress_calls.append(done)
        hooks.release.wait(30.0)

    hooks.progress_callback = progress
    hooks.progress_callback_timeout = HOOK_LIMIT


def observers(*factories: Callable[[], ProcessorObserver]) -> Callable[[Hooks], None]:
    def apply(hooks: Hooks) -> None:
        hooks.observers.extend(factory() for factory in factories)

    return apply


def middleware(where: str, how: str) -> Callable[[Hooks], None]:
    def apply(hooks: Hooks) -> None:
        hooks.middlewares.append(FaultyMiddleware(where, how))

    return apply


def strategy_hook(on_error: str = "", cleanup: str = "") -> Callable[[Hooks], None]:
    def apply(hooks: Hooks) -> None:
        hooks.strategy_on_error = on_error or hooks.strategy_on_error
        hooks.strategy_cleanup = cleanup or hooks.strategy_cleanup

    return apply


def rate_limit_strategy(where: str) -> Callable[[Hooks], None]:
    def apply(hooks: Hooks) -> None:
        hooks.rate_limit_strategy = FaultyRateLimitStrategy(where)

    return apply


def everything_at_once(hooks: Hooks) -> None:
    for apply in (
        post_async_raise,
        progress_sync_raise,
        observers(RaisingObserver, HangingObserver, SyncObserver),
        middleware("before_process", "raise"),
        middleware("after_process", "raise"),
        middleware("on_error", "hang"),
        strategy_hook(on_error="raise", cleanup="hang"),
        rate_limit_strategy("should_apply_slow_start"),
    ):
        apply(hooks)


SCENARIOS: dict[str, Callable[[Hooks], None]] = {
    "post-processor-sync-raises": post_sync_raise,
    "post-processor-async-raises": post_async_raise,
    "post-processor-hangs": post_async_hang,
    "post-processor-raises-after-reading": post_flips_result,
    "observer-raises": observers(RaisingObserver),
    "observer-hangs": observers(HangingObserver),
    "observer-is-not-async": observers(SyncObserver),
    "observers-raise-and-hang": observers(RaisingObserver, HangingObserver, RaisingObserver),
    "progress-async-raises": progress_async_raise,
    "progress-sync-raises": progress_sync_raise,
    "progress-async-hangs-with-limit": progress_async_hang_with_limit,
    "progress-async-hangs-without-limit": progress_async_hang_without_limit,
    "progress-sync-hangs": progress_sync_hang,
    "strategy-on-error-raises": strategy_hook(on_error="raise"),
    "strategy-on-error-hangs": strategy_hook(on_error="hang"),
    "middleware-before-raises": middleware("before_process", "raise"),
    "middleware-after-raises": middleware("after_process", "raise"),
    "middleware-on-error-raises": middleware("on_error", "raise"),
    "middleware-on-error-hangs": middleware("on_error", "hang"),
    "strategy-cleanup-raises": strategy_hook(cleanup="raise"),
    "strategy-cleanup-hangs": strategy_hook(cleanup="hang"),
    "rate-limit-strategy-raises": rate_limit_strategy("on_rate_limit"),
    "slow-start-raises": rate_limit_strategy("should_apply_slow_start"),
    "everything-at-once": everything_at_once,
}

# Fewer items where every failed attempt waits out a hanging hook in real time.
SLOW = {"strategy-on-error-hangs", "middleware-on-error-hangs", "everything-at-once"}


@pytest.fixture
def short_hook_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the fixed per-hook limits (5 s, 75 s, 30 s) so hanging hooks cost milliseconds."""
    monkeypatch.setattr(processor_module, "OBSERVER_CALLBACK_TIMEOUT", HOOK_LIMIT)
    monkeypatch.setattr(batch_module, "POST_PROCESSOR_EXECUTION_TIMEOUT", HOOK_LIMIT)
    monkeypatch.setattr(batch_module, "STRATEGY_CLEANUP_TIMEOUT", HOOK_LIMIT)


@pytest.mark.usefixtures("short_hook_limits")
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_faulty_hook_changes_no_result(name: str) -> None:
    hooks = Hooks()
    SCENARIOS[name](hooks)
    n = 60 if name in SLOW else 300
    plans = make_plans(n, seed=sum(map(ord, name)), max_attempts=3)
    config = scripted_config(
        workers=16,
        max_attempts=3,
        timeout=0.25,
        progress_interval=7,
        progress_callback_timeout=hooks.progress_callback_timeout,
    )
    strategy = FaultyStrategy(
        plans, on_error=hooks.strategy_on_error, cleanup=hooks.strategy_cleanup
    )
    started = time.monotonic()
    try:
        run = await run_scripted_batch(
            plans,
            config,
            observers=hooks.observers,
            middlewares=hooks.middlewares,
            post_processor=hooks.post_processor,
            post_counter=hooks.post_counter if hooks.post_processor is not None else None,
            progress_callback=hooks.progress_callback,
            rate_limit_strategy=hooks.rate_limit_strategy,
            strategy=strategy,
            real_timeout=BATCH_BOUND,
        )
    finally:
        hooks.release.set()
    elapsed = time.monotonic() - started

    # Same outcomes, calls, tokens and error strings as without the faulty hook; every event
    # reached the well-behaved observer that comes after the faulty ones.
    assert_batch_matches_oracle(run)
    assert elapsed < BATCH_BOUND

    # The faulty hook really was exercised.
    if hooks.post_processor is not None:
        assert hooks.post_counter == Counter(r.item_id for r in run.result.results)
    if hooks.progress_callback is not None:
        assert hooks.progress_calls, "progress callback never ran"
    if hooks.strategy_on_error:
        assert strategy.on_error_calls == sum(run.log.calls.values()) - run.result.succeeded
    for m in hooks.middlewares:
        assert m.calls[m.where] > 0, m.calls
    for observer in hooks.observers:
        assert getattr(observer, "calls", 1) > 0
    if hooks.rate_limit_strategy is not None:
        assert hooks.rate_limit_strategy.calls[hooks.rate_limit_strategy.where] > 0
    assert strategy.cleaned_up == 1


@pytest.mark.usefixtures("short_hook_limits")
async def test_hanging_cleanup_of_one_strategy_does_not_stop_the_others() -> None:
    plans_a = make_plans(20, seed=1, max_attempts=1, weights={Step.OK: 1.0}, prefix="a")
    plans_b = make_plans(20, seed=2, max_attempts=1, weights={Step.OK: 1.0}, prefix="b")
    everything = plans_a + plans_b
    hanging = FaultyStrategy(everything, cleanup="hang")
    raising = FaultyStrategy(everything, cleanup="raise", log=hanging.log)
    good = ScriptedStrategy(everything, log=hanging.log)
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=scripted_config(workers=4, max_attempts=1)
    )
    async with processor:
        for i, plan in enumerate(everything):
            strategy = (hanging, raising, good)[i % 3]
            await processor.add_work(
                LLMWorkItem(item_id=plan.item_id, strategy=strategy, prompt=plan.item_id)
            )
        result = await asyncio.wait_for(processor.process_all(), 10.0)
    assert result.succeeded == 40
    assert (hanging.cleaned_up, raising.cleaned_up, good.cleaned_up) == (1, 1, 1)
