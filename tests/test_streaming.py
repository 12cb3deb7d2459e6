"""process_stream / process_prompts: lazy sources, bounds, completion order, early exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from async_batch_llm import LLMWorkItem, ProcessingEvent, WorkItemResult
from async_batch_llm.streaming import process_prompts, process_stream
from async_batch_llm.testing.clock import wait_all_tasks_blocked
from tests.conftest import EventRecorder, ScriptedStrategy, make_config


class Counting:
    """A lazy source that counts how many elements were read from it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        for index in range(self.count):
            self.read += 1
            yield f"p{index}"

    async def agen(self) -> AsyncIterator[str]:
        try:
            for index in range(self.count):
                self.read += 1
                yield f"p{index}"
        finally:
            self.closed = True


async def test_stream_yields_one_result_per_prompt_with_positional_ids() -> None:
    strategy = ScriptedStrategy()
    results = [r async for r in process_stream(strategy, ["a", "b", "c"], config=make_config())]
    assert sorted(r.item_id for r in results) == ["0", "1", "2"]
    assert {r.item_id: r.output for r in results} == {"0": "ok:a", "1": "ok:b", "2": "ok:c"}
    assert all(r.success for r in results)


async def test_stream_accepts_pairs_and_work_items_and_async_sources() -> None:
    strategy = ScriptedStrategy()
    other = ScriptedStrategy()

    async def source() -> AsyncIterator[Any]:
        yield ("first", "x")
        yield LLMWorkItem(item_id="second", strategy=other, prompt="y")

    results = [r async for r in process_stream(strategy, source(), config=make_config())]
    assert {r.item_id: r.output for r in results} == {"first": "ok:x", "second": "ok:y"}
    assert [c.prompt for c in strategy.calls] == ["x"]
    assert [c.prompt for c in other.calls] == ["y"]


async def test_results_come_in_completion_order() -> None:
    gates = {"slow": asyncio.Event(), "fast": asyncio.Event()}

    class Gated(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> Any:
            await gates[prompt].wait()
            return await super().execute(prompt, attempt, timeout, state)

    stream = process_stream(Gated(), ["slow", "fast"], config=make_config(max_workers=2))
    first = asyncio.ensure_future(anext(stream))
    await wait_all_tasks_blocked()
    gates["fast"].set()
    assert (await first).output == "ok:fast"
    gates["slow"].set()
    assert (await anext(stream)).output == "ok:slow"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_source_is_read_lazily_within_the_waiting_bound(kind: str) -> None:
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    source = Counting(1_000)
    prompts = source.agen() if kind == "async" else iter(source)
    stream = process_stream(strategy, prompts, config=make_config(max_workers=2, max_queue_size=3))
    pending = asyncio.ensure_future(anext(stream))
    await wait_all_tasks_blocked()
    # Two calls are blocked on the gate and three items wait for a worker: nothing more is read.
    assert len(strategy.calls) == 2
    assert source.read == 2 + 3
    gate.set()
    await pending
    await stream.aclose()
    assert source.read < 1_000


async def test_a_slow_consumer_slows_the_reading_of_the_source() -> None:
    strategy = ScriptedStrategy()
    source = Counting(100_000)
    config = make_config(max_workers=4, max_queue_size=8)
    async with process_stream(strategy, source.agen(), config=config) as stream:
        taken = 0
        async for _ in stream:
            taken += 1
            await wait_all_tasks_blocked()
            # Read but not yet consumed: at most waiting + in flight + the result buffer.
            assert source.read - taken <= 8 + 4 + 64
            if taken == 500:
                break
    assert source.read <= 500 + 8 + 4 + 64
    assert source.closed  # the async generator was closed on the early exit


async def test_break_stops_new_calls_at_once_and_cleans_up() -> None:
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    config = make_config(max_workers=3)

    async def consume() -> int:
        calls_at_break = -1
        async for result in process_stream(strategy, (f"p{i}" for i in range(50)), config=config):
            assert result.success
            gate.clear()  # the calls after this one block until released again
            calls_at_break = len(strategy.calls)
            break
        return calls_at_break

    gate.set()
    calls_at_break = await consume()
    gate.set()  # let anything still running finish, if something were
    for _ in range(5):
        await wait_all_tasks_blocked()
        await asyncio.sleep(0)
    assert len(strategy.calls) == calls_at_break
    assert strategy.cleaned == 1
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


async def test_aclose_cancels_calls_in_flight_and_runs_cleanup() -> None:
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    stream = process_stream(
        strategy, [f"p{i}" for i in range(10)], config=make_config(max_workers=2)
    )
    pending = asyncio.ensure_future(anext(stream))
    await wait_all_tasks_blocked()
    assert len(strategy.calls) == 2
    pending.cancel()
    await stream.aclose()
    assert strategy.log.count("cancelled:p0") + strategy.log.count("cancelled:p1") == 2
    assert strategy.cleaned == 1
    assert len(strategy.calls) == 2
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_bad_element_fails_the_stream_after_the_results_before_it() -> None:
    strategy = ScriptedStrategy()
    source: list[Any] = ["a", "b", 42, "never"]
    seen: list[WorkItemResult[str, Any]] = []

    async def consume() -> None:
        async for result in process_stream(strategy, source, config=make_config()):
            seen.append(result)

    with pytest.raises(TypeError, match=r"element 2 of the prompts .* got int: 42"):
        await consume()
    assert sorted(r.item_id for r in seen) == ["0", "1"]
    assert "never" not in [c.prompt for c in strategy.calls]


async def test_a_repeated_item_id_in_flight_is_refused() -> None:
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    stream = process_stream(strategy, [("x", "a"), ("x", "b")], config=make_config(max_workers=2))
    pending = asyncio.ensure_future(anext(stream))
    await wait_all_tasks_blocked()
    gate.set()
    assert (await pending).item_id == "x"
    with pytest.raises(ValueError, match="'x' appears twice"):
        await anext(stream)


async def test_a_failing_source_raises_its_error_after_the_results() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        raise OSError("disk gone")

    seen = []

    async def consume() -> None:
        async for result in process_stream(ScriptedStrategy(), source(), config=make_config()):
            seen.append(result.item_id)

    with pytest.raises(OSError, match="disk gone"):
        await consume()
    assert seen == ["0"]


async def test_bad_arguments_fail_when_the_stream_is_made() -> None:
    with pytest.raises(TypeError, match="prompts must be an iterable"):
        process_stream(ScriptedStrategy(), 42, config=make_config())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompts must be an iterable"):
        process_stream(ScriptedStrategy(), "one prompt", config=make_config())
    with pytest.raises(ValueError, match="needs an artifact_store"):
        process_stream(ScriptedStrategy(), ["a"], resume="reuse_all")
    with pytest.raises(ValueError, match="resume must be one of 'none', 'reuse_successes'"):
        process_stream(ScriptedStrategy(), ["a"], resume="sometimes")


async def test_observers_and_post_processor_see_every_result_of_a_stream() -> None:
    recorder = EventRecorder()
    posted: list[str] = []
    results = [
        r
        async for r in process_stream(
            ScriptedStrategy(),
            [f"p{i}" for i in range(20)],
            config=make_config(max_workers=4),
            observers=[recorder],
            post_processor=lambda r: posted.append(r.item_id),
        )
    ]
    assert len(results) == 20
    assert sorted(posted) == sorted(r.item_id for r in results)
    assert len(recorder.of(ProcessingEvent.ITEM_COMPLETED)) == 20
    completed = recorder.of(ProcessingEvent.BATCH_COMPLETED)
    assert completed[0]["total"] == 20
    assert completed[0]["succeeded"] == 20


async def test_process_prompts_collects_and_can_keep_source_order() -> None:
    class Reversed(ScriptedStrategy):
        def latency_for(self, prompt: str, attempt: int) -> float:
            return 10.0 - int(prompt[1:])

    from async_batch_llm.testing.clock import FakeClock

    clock = FakeClock()
    strategy = Reversed(clock=clock)
    prompts = [f"p{i}" for i in range(5)]

    async def run(preserve: bool) -> list[str]:
        from tests.conftest import drive

        batch = await drive(
            clock,
            process_prompts(
                strategy,
                prompts,
                preserve_order=preserve,
                config=make_config(max_workers=5),
                clock=clock,
            ),
        )
        assert batch.total_items == 5
        assert batch.succeeded == 5
        return [r.item_id for r in batch.results]

    assert await run(False) == ["4", "3", "2", "1", "0"]
    assert await run(True) == ["0", "1", "2", "3", "4"]
