"""ProcessorConfig(mode="batch") with AnthropicStrategy: the real ``anthropic`` SDK against the
emulator's Message Batches endpoints (time shared through :class:`JumpClock`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from pydantic import BaseModel

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm._strategies.batch_api import BatchLimits
from async_batch_llm.core import GuardrailConfig, PriceTable
from async_batch_llm.llm_strategies import AnthropicStrategy
from async_batch_llm.observers import MetricsObserver
from async_batch_llm.testing.servers import (
    AnthropicServer,
    BatchTiming,
    ErrorResponse,
    ProviderRequest,
    ServerError,
    default_respond,
)
from tests.providers.test_batch_mode_openai import HeldClock, JumpClock

MODEL = "claude-haiku-4-5"


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def timing() -> BatchTiming:
    return BatchTiming()


@pytest.fixture
async def server(clock: JumpClock, timing: BatchTiming) -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer(clock=clock.time, batch_timing=timing) as running:
        yield running


@pytest.fixture
async def client(server: AnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=server.url, api_key="test", max_retries=0
    ) as sdk_client:
        yield sdk_client


def config(mode: str = "batch") -> ProcessorConfig:
    return ProcessorConfig(
        max_workers=4,
        mode=mode,  # type: ignore[arg-type]
        guardrails=GuardrailConfig(cost_function=PriceTable.default().cost),
    )


async def run(
    strategy: AnthropicStrategy[Any], prompts: list[str], clock: JumpClock, mode: str = "batch"
) -> dict[str, Any]:
    async with ParallelBatchProcessor[str, Any, None](
        config=config(mode), clock=clock
    ) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=f"a{i}", strategy=strategy, prompt=prompt))
        batch = await processor.process_all()
    return {result.item_id: result for result in batch.results}


async def test_a_message_batch_returns_the_online_outputs_and_tokens_at_half_the_cost(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, clock: JumpClock
) -> None:
    strategy = AnthropicStrategy(client, MODEL)
    prompts = [f"summarise note {i} " + "with detail " * (i % 4) for i in range(1000)]
    batch = await run(strategy, prompts, clock)
    online = await run(strategy, prompts, clock, mode="online")
    assert len(batch) == len(online) == 1000
    assert all(r.success for r in batch.values())
    assert {k: r.output for k, r in batch.items()} == {k: r.output for k, r in online.items()}
    assert {k: r.token_usage for k, r in batch.items()} == {
        k: r.token_usage for k, r in online.items()
    }
    batch_tokens = sum(r.token_usage["total_tokens"] for r in batch.values())
    assert batch_tokens == sum(r.token_usage["total_tokens"] for r in online.values()) > 0
    batch_cost = sum(r.cost or 0.0 for r in batch.values())
    online_cost = sum(r.cost or 0.0 for r in online.values())
    assert online_cost > 0
    assert batch_cost == pytest.approx(online_cost / 2)
    # One message batch (1,000 requests is within Anthropic's limits), each request sent once.
    [job] = server.batch_jobs.values()
    assert job.state == "completed"
    assert len(server.batch_line_submissions) == 1000
    assert set(server.batch_line_submissions.values()) == {1}
    assert server.counts["messages"] == 1000  # the online run only


@pytest.mark.parametrize(
    "timing", [BatchTiming(expire_after_lines=4, expiring_jobs=1)], ids=["first-batch-expires"]
)
async def test_expired_requests_are_sent_again_in_a_second_batch(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, clock: JumpClock
) -> None:
    strategy = AnthropicStrategy(client, MODEL)
    results = await run(strategy, [f"expire {i}" for i in range(10)], clock)
    assert all(r.success for r in results.values())
    jobs = list(server.batch_jobs.values())
    assert [job.state for job in jobs] == ["expired", "completed"]
    assert [len(job.lines) for job in jobs] == [10, 6]


async def test_errored_requests_are_classified_like_online_ones(clock: JumpClock) -> None:
    seen: dict[str, int] = {}

    def respond(request: ProviderRequest) -> Any:
        seen[request.prompt] = seen.get(request.prompt, 0) + 1
        if request.prompt == "busy" and seen["busy"] == 1:
            return ServerError(529, "Overloaded")
        if request.prompt == "bad":
            return ErrorResponse(400, "messages: text content blocks must be non-empty")
        return default_respond(request)

    async with (
        AnthropicServer(clock=clock.time, respond=respond) as server,
        anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0) as sdk,
    ):
        results = await run(AnthropicStrategy(sdk, MODEL), ["busy", "bad", "fine"], clock)
    assert results["a0"].success  # overloaded (529): sent again in the next batch
    assert not results["a1"].success  # a 400: not sent again
    assert "non-empty" in (results["a1"].error or "")
    assert results["a2"].success
    assert seen == {"busy": 2, "bad": 1, "fine": 1}
    assert [len(job.lines) for job in server.batch_jobs.values()] == [3, 1]


class City(BaseModel):
    name: str
    population: int


async def test_structured_output_comes_back_through_the_tool_call(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, clock: JumpClock
) -> None:
    strategy = AnthropicStrategy(client, MODEL, output_type=City)
    results = await run(strategy, ["the largest city in Peru"], clock)
    result = results["a0"]
    assert result.success
    assert isinstance(result.output, City)
    [job] = server.batch_jobs.values()
    [(_, params)] = job.lines
    assert params["tool_choice"] == {"type": "tool", "name": "City"}


async def test_a_batch_request_carries_the_params_execute_would_send(
    client: anthropic.AsyncAnthropic,
) -> None:
    strategy = AnthropicStrategy(client, MODEL, max_tokens=77, system="Be brief.")
    line = strategy.batch_line("abl-x-1", "hello")
    assert line.payload == {
        "custom_id": "abl-x-1",
        "params": {
            "model": MODEL,
            "max_tokens": 77,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "hello"}],
        },
    }


async def test_batches_are_split_by_requests_and_bytes_and_an_oversized_request_fails_alone(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, clock: JumpClock
) -> None:
    strategy = AnthropicStrategy(client, MODEL)
    strategy.batch_limits = BatchLimits(max_requests=4, max_bytes=100_000)
    results = await run(strategy, [f"short {i}" for i in range(10)], clock)
    assert all(r.success for r in results.values())
    assert [len(job.lines) for job in server.batch_jobs.values()] == [4, 4, 2]

    sized = AnthropicStrategy(client, MODEL)
    one = sized.batch_line("abl-0123456789ab-1", "word " * 40).size  # the runner's ids
    sized.batch_limits = BatchLimits(max_requests=100, max_bytes=one * 3 + 10)
    before = len(server.batch_jobs)
    results = await run(sized, [*(["word " * 40] * 7), "word " * 400], clock)
    assert [results[f"a{i}"].success for i in range(8)] == [True] * 7 + [False]
    huge = results["a7"]
    assert huge.error_category == "bad_request"
    assert f"{one * 3 + 10} bytes" in (huge.error or "")
    sizes = [len(job.lines) for job in list(server.batch_jobs.values())[before:]]
    assert sizes == [3, 3, 1]


@pytest.mark.parametrize("timing", [BatchTiming(seconds_per_line=100.0)], ids=["slow-lines"])
async def test_a_batch_timeout_cancels_the_message_batch_and_keeps_every_finished_request(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    clock = HeldClock()
    server.clock = clock.time
    metrics = MetricsObserver()
    cfg = ProcessorConfig(
        max_workers=2,
        mode="batch",
        guardrails=GuardrailConfig(batch_timeout=1000.0, cost_function=PriceTable.default().cost),
    )
    strategy = AnthropicStrategy(client, MODEL)

    async def timed_out() -> dict[str, Any]:
        async with ParallelBatchProcessor[str, Any, None](
            config=cfg, clock=clock, observers=[metrics]
        ) as processor:
            for i in range(12):
                await processor.add_work(LLMWorkItem(f"t{i}", strategy, f"slow {i}"))
            batch = await processor.process_all()
        return {result.item_id: result for result in batch.results}

    task = asyncio.create_task(timed_out())
    await clock.until_held(2)  # the batch timer (1000 s) and the first poll wait (5 s)
    clock.release_longest()  # 1000 s pass: validating 10 s + 9 requests of 100 s have run
    results = await task
    [job] = server.batch_jobs.values()
    assert job.state == "cancelled"
    assert server.counts["batches_cancel"] == 1
    assert sorted(k for k, r in results.items() if r.success) == [f"t{i}" for i in range(9)]
    stopped = [r for r in results.values() if not r.success]
    assert {r.error_category for r in stopped} == {"batch_timeout"}
    assert len(stopped) == 3
    snapshot = await metrics.get_metrics()  # an ended batch with canceled requests: "cancelled"
    assert snapshot["batch_jobs_completed"] == {"cancelled": 1}
    assert (snapshot["batch_lines_succeeded"], snapshot["batch_lines_expired"]) == (9, 3)
    assert snapshot["batch_jobs_in_progress"] == 0
