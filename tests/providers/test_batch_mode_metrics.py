"""MetricsObserver counts the jobs of a real batch-mode run: each provider's SDK against its
emulator, the first job expiring with part of its lines run (time shared through
:class:`JumpClock`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from async_batch_llm import (
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
)
from async_batch_llm.llm_strategies import AnthropicStrategy, GeminiStrategy, OpenAIStrategy
from async_batch_llm.models import GeminiModel
from async_batch_llm.observers import MetricsObserver
from async_batch_llm.testing.servers import (
    AnthropicServer,
    BatchTiming,
    GeminiServer,
    OpenAIServer,
)
from tests.providers.test_batch_mode_openai import JumpClock

BatchServer = OpenAIServer | AnthropicServer | GeminiServer

EXPIRING = BatchTiming(expire_after_lines=4, expiring_jobs=1)
"""The first job expires once 4 of its lines ran; later jobs complete."""


def text(response: LLMResponse) -> str:
    return response.text


@asynccontextmanager
async def provider(
    name: str, clock: JumpClock
) -> AsyncIterator[tuple[BatchServer, LLMCallStrategy[Any]]]:
    """The emulator of ``name`` and a built-in strategy whose SDK client talks to it."""
    async with AsyncExitStack() as stack:
        if name == "openai":
            server: BatchServer = await stack.enter_async_context(
                OpenAIServer(clock=clock.time, batch_timing=EXPIRING)
            )
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
            stack.push_async_callback(client.close)
            strategy: LLMCallStrategy[Any] = OpenAIStrategy(client, "gpt-4o-mini")
        elif name == "anthropic":
            server = await stack.enter_async_context(
                AnthropicServer(clock=clock.time, batch_timing=EXPIRING)
            )
            sdk = anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0)
            stack.push_async_callback(sdk.close)
            strategy = AnthropicStrategy(sdk, "claude-haiku-4-5")
        else:
            server = await stack.enter_async_context(
                GeminiServer(clock=clock.time, batch_timing=EXPIRING)
            )
            gemini = genai.Client(api_key="t", http_options=types.HttpOptions(base_url=server.url))
            stack.push_async_callback(gemini.aio.aclose)
            strategy = GeminiStrategy(GeminiModel("gemini-2.5-flash", gemini), text)
        yield server, strategy


ALL: list[str] = ["openai", "anthropic", "gemini"]


@pytest.mark.parametrize("name", ALL)
async def test_the_observer_counts_both_jobs_and_the_lines_the_expired_one_never_ran(
    name: str,
) -> None:
    clock = JumpClock()
    metrics = MetricsObserver()
    async with provider(name, clock) as (server, strategy):
        async with ParallelBatchProcessor[str, Any, None](
            config=ProcessorConfig(mode="batch", max_workers=2),
            clock=clock,
            observers=[metrics],
        ) as processor:
            for i in range(10):
                await processor.add_work(
                    LLMWorkItem(item_id=f"m{i}", strategy=strategy, prompt=f"expire {i}")
                )
            batch = await processor.process_all()
        assert [job.state for job in server.batch_jobs.values()] == ["expired", "completed"]
    assert batch.succeeded == 10
    snapshot = await metrics.get_metrics()
    assert snapshot["items_succeeded"] == 10
    assert {key: value for key, value in snapshot.items() if key.startswith("batch_")} == {
        "batch_jobs_submitted": 2,
        "batch_jobs_completed": {"expired": 1, "completed": 1},
        "batch_jobs_in_progress": 0,
        "batch_lines_succeeded": 10,
        "batch_lines_failed": 0,
        "batch_lines_expired": 6,
    }
    exported = await metrics.export_prometheus()
    assert "async_batch_llm_batch_jobs_submitted_total 2\n" in exported
    assert 'async_batch_llm_batch_lines_total{outcome="expired"} 6\n' in exported


async def test_an_online_run_reports_what_060_reported() -> None:
    clock = JumpClock()
    metrics = MetricsObserver()
    async with (
        provider("openai", clock) as (_, strategy),
        ParallelBatchProcessor[str, Any, None](
            config=ProcessorConfig(max_workers=2), clock=clock, observers=[metrics]
        ) as processor,
    ):
        for i in range(3):
            await processor.add_work(
                LLMWorkItem(item_id=f"o{i}", strategy=strategy, prompt=f"online {i}")
            )
        await processor.process_all()
    snapshot = await metrics.get_metrics()
    assert list(snapshot) == [
        "items_processed",
        "items_succeeded",
        "items_failed",
        "rate_limits_hit",
        "total_cooldown_time",
        "error_counts",
        "processing_times_count",
        "processing_times_sum",
        "processing_times",
        "avg_processing_time",
        "success_rate",
    ]
    assert snapshot["items_succeeded"] == 3
    assert "async_batch_llm_batch_" not in await metrics.export_prometheus()
