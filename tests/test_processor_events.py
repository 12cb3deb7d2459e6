"""Observer events (§4.11) with their exact payloads, and D3: one ITEM_FAILED per failed item."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    GeminiErrorClassifier,
    LLMWorkItem,
    MetricsObserver,
    ProcessingEvent,
    RateLimitStrategy,
    RetryState,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.observers import ExtendedEvent
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked
from tests.conftest import (
    USAGE,
    EventRecorder,
    FullEventRecorder,
    RateLimitError,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)

E = ProcessingEvent
X = ExtendedEvent


async def test_event_sequence_and_payloads_of_a_simple_batch() -> None:
    recorder = EventRecorder()
    before = time.time()
    result = await run_batch(
        make_processor(observers=[recorder]), items(ScriptedStrategy(), "a", "b")
    )
    after = time.time()
    assert result.succeeded == 2
    assert recorder.kinds() == [
        E.BATCH_STARTED,
        E.WORKER_STARTED,
        E.ITEM_STARTED,
        E.ITEM_COMPLETED,
        E.ITEM_STARTED,
        E.ITEM_COMPLETED,
        E.WORKER_STOPPED,
        E.BATCH_COMPLETED,
    ]
    events = recorder.events
    started = events[0][1]
    assert set(started) == {"total", "max_workers", "start_time"}
    assert (started["total"], started["max_workers"]) == (2, 1)
    assert before <= started["start_time"] <= after
    assert events[1][1] == {"worker_id": 0}
    assert events[2][1] == {"item_id": "a", "worker_id": 0}
    assert events[6][1] == {"worker_id": 0}
    completed = events[7][1]
    assert set(completed) == {
        "processed",
        "succeeded",
        "failed",
        "total",
        "total_tokens",
        "cached_input_tokens",
        "duration",
    }
    assert {k: v for k, v in completed.items() if k != "duration"} == {
        "processed": 2,
        "succeeded": 2,
        "failed": 0,
        "total": 2,
        "total_tokens": 30,
        "cached_input_tokens": 0,
    }
    assert 0.0 <= completed["duration"] <= after - before + 0.01


async def test_batch_completed_counts_failures_and_cached_tokens() -> None:
    recorder = EventRecorder()
    cached: TokenUsage = {
        "input_tokens": 100,
        "output_tokens": 10,
        "total_tokens": 110,
        "cached_input_tokens": 80,
    }
    strategy = ScriptedStrategy({"a": [("out", cached)], "b": [ValueError("bad")]})
    await run_batch(make_processor(observers=[recorder]), items(strategy, "a", "b"))
    (completed,) = recorder.of(E.BATCH_COMPLETED)
    assert completed["processed"] == 2
    assert completed["succeeded"] == 1
    assert completed["failed"] == 1
    assert completed["total_tokens"] == 110
    assert completed["cached_input_tokens"] == 80


async def test_item_completed_reports_attempt_duration_and_int_tokens(
    fake_clock: FakeClock,
) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy(clock=fake_clock, latency=2.5)
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    (completed,) = recorder.of(E.ITEM_COMPLETED)
    # The 0.6.0 keys, and the attempt's input/output tokens added after it.
    assert set(completed) == {"item_id", "duration", "tokens", "input_tokens", "output_tokens"}
    assert completed["item_id"] == "a"
    assert completed["duration"] == 2.5
    assert completed["tokens"] == 15
    assert type(completed["tokens"]) is int
    assert (completed["input_tokens"], completed["output_tokens"]) == (10, 5)


async def test_item_completed_tokens_default_to_zero_without_total() -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [("out", {"input_tokens": 3})]})
    await run_batch(make_processor(observers=[recorder]), items(strategy, "a"))
    assert recorder.of(E.ITEM_COMPLETED)[0]["tokens"] == 0


async def test_item_started_is_emitted_once_per_attempt(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [ConnectionError("x"), ConnectionError("y")]})
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.ITEM_STARTED) == [{"item_id": "a", "worker_id": 0}] * 3
    assert len(recorder.of(E.ITEM_COMPLETED)) == 1
    assert recorder.of(E.ITEM_FAILED) == []


async def test_item_completed_duration_covers_only_its_own_attempt(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [ConnectionError("x")]}, clock=fake_clock, latency=0.25)
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.ITEM_COMPLETED)[0]["duration"] == 0.25  # not 0.25 + 1.0 + 0.25


async def test_worker_started_and_stopped_once_per_worker_id() -> None:
    recorder = EventRecorder()
    processor = make_processor(config=make_config(max_workers=3), observers=[recorder])
    await run_batch(processor, items(ScriptedStrategy(), *[f"i{n}" for n in range(5)]))
    started = sorted(d["worker_id"] for d in recorder.of(E.WORKER_STARTED))
    stopped = sorted(d["worker_id"] for d in recorder.of(E.WORKER_STOPPED))
    assert started == stopped == [0, 1, 2]
    assert {d["worker_id"] for d in recorder.of(E.ITEM_STARTED)} <= {0, 1, 2}
    assert recorder.kinds()[0] is E.BATCH_STARTED
    assert recorder.kinds()[-1] is E.BATCH_COMPLETED


async def test_second_process_all_emits_batch_and_worker_events() -> None:
    recorder = EventRecorder()
    processor = make_processor(config=make_config(max_workers=2), observers=[recorder])
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    recorder.events.clear()
    await processor.process_all()
    kinds = recorder.kinds()
    assert kinds[0] is E.BATCH_STARTED
    assert kinds[-1] is E.BATCH_COMPLETED
    assert sorted(kinds[1:-1], key=lambda e: e.value) == [
        E.WORKER_STARTED,
        E.WORKER_STARTED,
        E.WORKER_STOPPED,
        E.WORKER_STOPPED,
    ]
    assert recorder.of(E.BATCH_STARTED)[0]["total"] == 0
    assert recorder.of(E.BATCH_COMPLETED)[0]["processed"] == 0


async def test_rate_limit_and_cooldown_events(fake_clock: FakeClock) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.RATE_LIMIT_HIT) == [{"item_id": "a", "worker_id": 0}]
    assert recorder.of(E.COOLDOWN_STARTED) == [{"worker_id": 0, "duration": 8.0, "consecutive": 1}]
    assert recorder.of(E.COOLDOWN_ENDED) == [{"duration": 8.0}]
    kinds = recorder.kinds()
    assert (
        kinds.index(E.RATE_LIMIT_HIT)
        < kinds.index(E.COOLDOWN_STARTED)
        < kinds.index(E.COOLDOWN_ENDED)
        < kinds.index(E.ITEM_COMPLETED)
    )


async def test_cooldown_ended_reports_the_actual_duration(fake_clock: FakeClock) -> None:
    class SlowPlanner(RateLimitStrategy):
        """Takes 1.5 s of virtual time to decide on a 4 s cooldown."""

        async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
            await fake_clock.sleep(1.5)
            return 4.0

        def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
            return False, 0.0

    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[recorder], rate_limit_strategy=SlowPlanner())
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert recorder.of(E.COOLDOWN_STARTED)[0]["duration"] == 4.0
    assert recorder.of(E.COOLDOWN_ENDED) == [{"duration": 5.5}]


async def test_cooldown_ended_carries_error_when_on_rate_limit_raises(
    fake_clock: FakeClock,
) -> None:
    class Broken(RateLimitStrategy):
        async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
            raise RuntimeError("strategy bug " + "z" * 300)

        def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
            return False, 0.0

    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [RateLimitError()]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[recorder], rate_limit_strategy=Broken())
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.succeeded == 1
    assert recorder.of(E.COOLDOWN_STARTED) == [{"worker_id": 0, "duration": 0.0, "consecutive": 1}]
    (ended,) = recorder.of(E.COOLDOWN_ENDED)
    assert ended == {"duration": 0.0, "error": ("strategy bug " + "z" * 300)[:200]}
    assert [c.at for c in strategy.calls] == [0.0, 1.0]  # no cooldown, only the backoff wait


# --------------------------------------------------------------------------- D3: ITEM_FAILED


class RaisesInPrepare(ScriptedStrategy):
    async def prepare(self) -> None:
        raise OSError("no cache")


class HangsOnce(ScriptedStrategy):
    """The first call hangs until the framework timeout cancels it."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("strategy", "config", "error_type"),
    [
        pytest.param(
            ScriptedStrategy({"a": [ValueError("bad")]}), {}, "ValueError", id="non-retryable"
        ),
        pytest.param(
            ScriptedStrategy({"a": [ConnectionError("reset")] * 3}),
            {"retry_initial_wait": 0.001},
            "ConnectionError",
            id="retries-exhausted",
        ),
        pytest.param(
            ScriptedStrategy({"a": [ConnectionError("reset"), KeyError("k")]}),
            {"retry_initial_wait": 0.001},
            "KeyError",
            id="non-retryable-after-a-retry",
        ),
        pytest.param(RaisesInPrepare(), {}, "OSError", id="prepare-failure"),
        pytest.param(
            HangsOnce(),
            {"retry_max_attempts": 1, "timeout_per_item": 0.01},
            "FrameworkTimeoutError",
            id="timeout-on-last-attempt",
        ),
    ],
)
async def test_item_failed_is_emitted_exactly_once_per_failed_item(
    strategy: ScriptedStrategy, config: dict[str, Any], error_type: str
) -> None:
    recorder = EventRecorder()
    metrics = MetricsObserver()
    processor = make_processor(config=make_config(**config), observers=[recorder, metrics])
    result = await run_batch(processor, [*items(strategy, "a"), *items(ScriptedStrategy(), "ok")])
    failed = [r for r in result.results if not r.success]
    assert [r.item_id for r in failed] == ["a"]
    assert failed[0].error is not None
    assert failed[0].error.startswith(error_type + ": ")
    assert recorder.of(E.ITEM_FAILED) == [{"item_id": "a", "error_type": error_type}]
    assert metrics.metrics["items_failed"] == 1
    assert metrics.metrics["error_counts"] == {error_type: 1}


async def test_item_failed_for_a_non_retryable_rate_limit_after_the_cooldown(
    fake_clock: FakeClock,
) -> None:
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"a": [Exception("429 RESOURCE_EXHAUSTED")]})
    processor = make_processor(
        fake_clock, observers=[recorder], error_classifier=GeminiErrorClassifier()
    )
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].error == "Exception: 429 RESOURCE_EXHAUSTED"
    assert recorder.of(E.ITEM_FAILED) == [{"item_id": "a", "error_type": "Exception"}]
    kinds = recorder.kinds()
    assert kinds.index(E.COOLDOWN_ENDED) < kinds.index(E.ITEM_FAILED)


async def test_middleware_skip_emits_neither_item_failed_nor_item_completed() -> None:
    class SkipAll(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None

    recorder = EventRecorder()
    processor = make_processor(observers=[recorder], middlewares=[SkipAll()])
    result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert result.failed == 1
    assert recorder.of(E.ITEM_STARTED) == [{"item_id": "a", "worker_id": 0}]
    assert recorder.of(E.ITEM_FAILED) == []
    assert recorder.of(E.ITEM_COMPLETED) == []


class Rescue(BaseMiddleware[str, str, Any]):
    """Supplies a result for every failed item: success or failure as configured."""

    def __init__(self, success: bool) -> None:
        self.success = success

    async def on_error(
        self, work_item: LLMWorkItem[str, str, Any], error: Exception
    ) -> WorkItemResult[str, Any] | None:
        return WorkItemResult(
            item_id=work_item.item_id,
            success=self.success,
            output="rescued" if self.success else None,
            error=None if self.success else "Rescued: handled",
        )


async def test_middleware_supplied_success_emits_no_item_failed() -> None:
    recorder = EventRecorder()
    processor = make_processor(observers=[recorder], middlewares=[Rescue(success=True)])
    strategy = ScriptedStrategy({"a": [ValueError("bad")]})
    result = await run_batch(processor, items(strategy, "a"))
    assert result.results[0].output == "rescued"
    assert recorder.of(E.ITEM_FAILED) == []


async def test_middleware_supplied_failure_still_counts_as_one_item_failed() -> None:
    # D3: every item whose final result is a failure is observable, whoever built the result.
    recorder = EventRecorder()
    processor = make_processor(observers=[recorder], middlewares=[Rescue(success=False)])
    strategy = ScriptedStrategy({"a": [ValueError("bad")]})
    result = await run_batch(processor, items(strategy, "a"))
    assert result.results[0].error == "Rescued: handled"
    assert recorder.of(E.ITEM_FAILED) == [{"item_id": "a", "error_type": "ValueError"}]


async def test_metrics_items_failed_equals_batch_failed_minus_skips(fake_clock: FakeClock) -> None:
    class SkipPrefix(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None if work_item.item_id.startswith("skip") else work_item

    metrics = MetricsObserver()
    usage: TokenUsage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    strategy = ScriptedStrategy(
        {
            "logic": [TypeError("t")],
            "exhausted": [TokenTrackingError("boom", token_usage=usage)] * 3,
            "flaky": [ConnectionError("c")],
        },
        clock=fake_clock,
    )
    processor = make_processor(
        fake_clock,
        config=make_config(max_workers=3),
        observers=[metrics],
        middlewares=[SkipPrefix()],
    )
    result = await run_batch(
        processor,
        items(strategy, "ok1", "logic", "skip1", "exhausted", "flaky", "skip2", "ok2"),
        fake_clock,
    )
    skips = sum(r.error == "Skipped by middleware" for r in result.results)
    assert (result.failed, skips) == (4, 2)
    assert metrics.metrics["items_failed"] == result.failed - skips == 2
    assert metrics.metrics["items_succeeded"] == result.succeeded == 3


async def test_every_observer_receives_the_same_sequence(fake_clock: FakeClock) -> None:
    first, second = EventRecorder(), EventRecorder()
    strategy = ScriptedStrategy(
        {"rl": [RateLimitError()], "bad": [ValueError("v")]}, clock=fake_clock
    )
    processor = make_processor(
        fake_clock, config=make_config(max_workers=2), observers=[first, second]
    )
    await run_batch(processor, items(strategy, "rl", "bad", "ok"), fake_clock)
    assert first.events == second.events
    # Every 0.6.0 kind occurred, and nothing else: these observers did not ask for more.
    assert set(first.kinds()) == set(ProcessingEvent)


async def test_event_payloads_use_plain_types() -> None:
    recorder = EventRecorder()
    await run_batch(make_processor(observers=[recorder]), items(ScriptedStrategy(), "a"))
    for _, data in recorder.events:
        assert type(data) is dict
        assert all(type(key) is str for key in data)
    assert recorder.of(E.ITEM_COMPLETED)[0]["tokens"] == USAGE["total_tokens"]


# ------------------------------------------------------------- events added after 0.6.0


async def test_events_added_after_0_6_0_reach_only_observers_that_ask(
    fake_clock: FakeClock,
) -> None:
    plain, full = EventRecorder(), FullEventRecorder()
    strategy = ScriptedStrategy({"a": [ConnectionError("x")]}, clock=fake_clock)
    processor = make_processor(fake_clock, observers=[plain, full])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert X.ATTEMPT_FAILED in full.kinds()
    assert all(isinstance(kind, ProcessingEvent) for kind in plain.kinds())
    # Apart from the added events, both saw the same sequence.
    assert [e for e in full.events if isinstance(e[0], ProcessingEvent)] == plain.events


async def test_attempt_failed_reports_every_failed_attempt_as_it_ends(
    fake_clock: FakeClock,
) -> None:
    recorder = FullEventRecorder()
    failed_usage: TokenUsage = {"input_tokens": 4, "output_tokens": 1, "total_tokens": 5}
    cut = ConnectionError("cut")
    cut.__dict__["_failed_token_usage"] = failed_usage
    strategy = ScriptedStrategy({"a": [RateLimitError(), cut, ValueError("bad")]})
    processor = make_processor(fake_clock, observers=[recorder])
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.failed == 1
    assert recorder.of(X.ATTEMPT_FAILED) == [
        {
            "item_id": "a",
            "worker_id": 0,
            "attempt": attempt,
            "error_type": error_type,
            "retryable": retryable,
            "rate_limit": rate_limit,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "tokens": tokens,
            "skipped": False,
        }
        for attempt, error_type, retryable, rate_limit, input_tokens, output_tokens, tokens in [
            (1, "RateLimitError", True, True, 0, 0, 0),
            (2, "ConnectionError", True, False, 4, 1, 5),
            (3, "ValueError", False, False, 0, 0, 0),
        ]
    ]
    kinds = recorder.kinds()
    # Each ends its attempt: before the rate limit's cooldown, before the next ITEM_STARTED.
    first = kinds.index(X.ATTEMPT_FAILED)
    assert kinds[first + 1] is E.RATE_LIMIT_HIT
    assert kinds.count(E.ITEM_STARTED) == kinds.count(X.ATTEMPT_FAILED) == 3
    assert kinds.index(E.ITEM_FAILED) > len(kinds) - 1 - kinds[::-1].index(X.ATTEMPT_FAILED)


async def test_attempt_events_name_the_strategys_model() -> None:
    class Named(ScriptedStrategy):
        model = "m-1"

    recorder = FullEventRecorder()
    strategy = Named({"a": [ConnectionError("x")]})
    config = make_config(retry_initial_wait=0.001)
    await run_batch(make_processor(config=config, observers=[recorder]), items(strategy, "a"))
    assert recorder.of(X.ATTEMPT_FAILED)[0]["model"] == "m-1"
    assert recorder.of(E.ITEM_COMPLETED)[0]["model"] == "m-1"


async def test_a_middleware_skip_ends_its_attempt_with_attempt_failed() -> None:
    class SkipAll(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None

    recorder = FullEventRecorder()
    processor = make_processor(observers=[recorder], middlewares=[SkipAll()])
    await run_batch(processor, items(ScriptedStrategy(), "a"))
    (skipped,) = recorder.of(X.ATTEMPT_FAILED)
    assert skipped["error_type"] == "SkippedByMiddleware"
    assert (skipped["skipped"], skipped["retryable"], skipped["attempt"]) == (True, False, 1)


async def test_batch_aborted_is_emitted_when_the_batch_is_cancelled() -> None:
    recorder = FullEventRecorder()
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    processor = make_processor(observers=[recorder])
    for item in items(strategy, "a", "b"):
        await processor.add_work(item)
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()
    assert len(strategy.calls) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (aborted,) = recorder.of(X.BATCH_ABORTED)
    assert set(aborted) == {"processed", "total", "duration", "error_type"}
    assert (aborted["processed"], aborted["total"]) == (0, 2)
    assert aborted["error_type"] == "CancelledError"
    assert aborted["duration"] >= 0
    assert recorder.kinds()[-1] is X.BATCH_ABORTED
    assert recorder.of(E.BATCH_COMPLETED) == []


async def test_a_strategy_model_property_that_raises_costs_nothing() -> None:
    class Broken(ScriptedStrategy):
        @property
        def model(self) -> str:
            raise RuntimeError("no model")

    recorder = FullEventRecorder()
    result = await run_batch(make_processor(observers=[recorder]), items(Broken(), "a"))
    assert result.succeeded == 1
    assert "model" not in recorder.of(E.ITEM_COMPLETED)[0]
