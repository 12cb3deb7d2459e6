"""ProcessorConfig(mode="batch") with GeminiStrategy over a GeminiModel: the real ``google-genai``
SDK against the emulator's batch job endpoints (inline requests; time shared through
:class:`JumpClock`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

from async_batch_llm import LLMResponse, LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm._strategies.batch_api import BatchLimits, BatchLine
from async_batch_llm._strategies.gemini_batch import GeminiBatchBackend
from async_batch_llm.artifacts import ResumePolicy, SqliteArtifactStore
from async_batch_llm.core import GuardrailConfig, PriceTable
from async_batch_llm.llm_strategies import GeminiStrategy
from async_batch_llm.models import GeminiModel
from async_batch_llm.testing.servers import (
    BatchTiming,
    ErrorResponse,
    GeminiServer,
    ProviderRequest,
    RateLimited,
    default_respond,
)
from tests.providers.test_batch_mode_openai import HeldClock, JumpClock
from tests.providers.test_batch_mode_resume import Crash, expect_crash

MODEL = "gemini-2.5-flash"


def text(response: LLMResponse) -> str:
    return response.text


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def timing() -> BatchTiming:
    return BatchTiming()


@pytest.fixture
async def server(clock: JumpClock, timing: BatchTiming) -> AsyncIterator[GeminiServer]:
    async with GeminiServer(clock=clock.time, batch_timing=timing) as running:
        yield running


def sdk_client(server: GeminiServer) -> genai.Client:
    return genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))


@pytest.fixture
async def client(server: GeminiServer) -> AsyncIterator[genai.Client]:
    sdk = sdk_client(server)
    try:
        yield sdk
    finally:
        await sdk.aio.aclose()


def strategy_for(client: genai.Client, **kwargs: Any) -> GeminiStrategy[str]:
    return GeminiStrategy(GeminiModel(MODEL, client, **kwargs), text)


async def run(
    strategy: GeminiStrategy[Any],
    prompts: Sequence[str],
    clock: JumpClock,
    mode: str = "batch",
    guardrails: GuardrailConfig | None = None,
    store: SqliteArtifactStore | None = None,
) -> dict[str, Any]:
    resume = ResumePolicy.REUSE_SUCCESSES if store is not None else ResumePolicy.NONE
    cfg = ProcessorConfig(
        max_workers=4,
        mode=mode,  # type: ignore[arg-type]
        guardrails=guardrails or GuardrailConfig(cost_function=PriceTable.default().cost),
    )
    async with ParallelBatchProcessor[str, Any, None](
        config=cfg, clock=clock, artifact_store=store, resume=resume
    ) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=f"g{i}", strategy=strategy, prompt=prompt))
        try:
            batch = await processor.process_all()
        finally:
            if store is not None:
                store.close()
    return {result.item_id: result for result in batch.results}


async def test_a_batch_job_returns_the_online_outputs_and_tokens_at_half_the_cost(
    server: GeminiServer, client: genai.Client, clock: JumpClock
) -> None:
    strategy = strategy_for(client, system_instruction="Answer briefly.")
    prompts = [f"summarise note {i} " + "with detail " * (i % 4) for i in range(1000)]
    batch = await run(strategy, prompts, clock)
    online = await run(strategy, prompts, clock, mode="online")
    assert len(batch) == len(online) == 1000
    assert all(r.success for r in batch.values())
    assert {k: r.output for k, r in batch.items()} == {k: r.output for k, r in online.items()}
    assert {k: r.token_usage for k, r in batch.items()} == {
        k: r.token_usage for k, r in online.items()
    }
    batch_cost = sum(r.cost or 0.0 for r in batch.values())
    online_cost = sum(r.cost or 0.0 for r in online.values())
    assert online_cost > 0
    assert batch_cost == pytest.approx(online_cost / 2)
    [job] = server.batch_jobs.values()
    assert job.state == "completed"
    assert job.extra["model"] == f"models/{MODEL}"
    assert set(server.batch_line_submissions.values()) == {1}
    assert len(server.batch_line_submissions) == 1000
    assert server.counts["generate_content"] == 1000  # the online run only


@pytest.mark.parametrize(
    "timing", [BatchTiming(expire_after_lines=4, expiring_jobs=1)], ids=["first-job-expires"]
)
async def test_an_expired_jobs_remaining_requests_go_in_a_second_job(
    server: GeminiServer, client: genai.Client, clock: JumpClock
) -> None:
    results = await run(strategy_for(client), [f"expire {i}" for i in range(10)], clock)
    assert all(r.success for r in results.values())
    jobs = list(server.batch_jobs.values())
    assert [job.state for job in jobs] == ["expired", "completed"]
    assert [len(job.lines) for job in jobs] == [10, 6]
    assert sum(server.batch_line_submissions.values()) == 16  # each round has its own keys


async def test_per_request_errors_are_classified_like_online_ones(clock: JumpClock) -> None:
    async def outcome(mode: str) -> tuple[dict[str, Any], dict[str, int], GeminiServer]:
        seen: dict[str, int] = {}

        def respond(request: ProviderRequest) -> Any:
            seen[request.prompt] = seen.get(request.prompt, 0) + 1
            if request.prompt == "busy" and seen["busy"] == 1:
                return RateLimited(retry_after=None)
            if request.prompt == "bad":
                return ErrorResponse(400, "contents.parts must not be empty")
            return default_respond(request)

        async with GeminiServer(clock=clock.time, respond=respond) as server:
            client = sdk_client(server)
            try:
                results = await run(strategy_for(client), ["busy", "bad", "fine"], clock, mode)
            finally:
                await client.aio.aclose()
        return results, seen, server

    online, online_seen, _ = await outcome("online")
    batch, batch_seen, server = await outcome("batch")
    assert batch_seen == online_seen  # the same requests were sent again, as often
    assert batch_seen["busy"] == 2  # a 429 line is sent again in the next job
    for key in ("g0", "g1", "g2"):
        assert batch[key].success == online[key].success
        assert batch[key].error_category == online[key].error_category
    assert [batch[key].success for key in ("g0", "g1", "g2")] == [True, False, True]
    assert "must not be empty" in (batch["g1"].error or "")
    assert server.counts["generate_content"] == 0
    # google-genai's 400 is a retryable "bad_request" online (GeminiErrorClassifier): the same
    # here, so "bad" goes in every job until its attempts run out.
    assert online["g1"].error_category == "bad_request"
    assert [len(job.lines) for job in server.batch_jobs.values()] == [3, 2, 1]


async def test_cancelling_the_batch_cancels_its_job(
    server: GeminiServer, client: genai.Client
) -> None:
    clock = HeldClock()
    server.clock = clock.time
    task = asyncio.create_task(run(strategy_for(client), [f"cancel {i}" for i in range(4)], clock))
    await clock.until_held(1)  # the runner waits before its first poll
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [job] = server.batch_jobs.values()
    assert job.state == "cancelling"
    assert server.counts["batches_cancel"] == 1
    clock.now += 1
    state = (await client.aio.batches.get(name=job.id)).state
    assert state == types.JobState.JOB_STATE_CANCELLED


async def test_a_resumed_run_polls_the_job_it_already_submitted(
    server: GeminiServer, client: genai.Client, clock: JumpClock, tmp_path: Path
) -> None:
    class CrashingClock(JumpClock):
        async def sleep(self, seconds: float) -> None:
            raise Crash

    strategy = strategy_for(client)
    prompts = [f"resume {i}" for i in range(12)]
    store = tmp_path / "run.db"
    await expect_crash(run(strategy, prompts, CrashingClock(), store=SqliteArtifactStore(store)))
    assert len(server.batch_jobs) == 1  # submitted, then the process died

    results = await run(strategy, prompts, clock, store=SqliteArtifactStore(store))
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1  # polled, not submitted again
    assert len(server.batch_line_submissions) == 12
    assert set(server.batch_line_submissions.values()) == {1}
    assert server.counts["batches_create"] == 1


async def test_a_job_whose_name_was_never_saved_is_found_by_its_display_name(
    server: GeminiServer,
    client: genai.Client,
    clock: JumpClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit = GeminiBatchBackend.submit

    async def crash_after_create(
        self: GeminiBatchBackend, lines: Sequence[BatchLine], tag: str
    ) -> str:
        await submit(self, lines, tag)  # the job is created, then the process dies
        raise Crash

    strategy = strategy_for(client)
    store = tmp_path / "run.db"
    with monkeypatch.context() as patched:
        patched.setattr(GeminiBatchBackend, "submit", crash_after_create)
        await expect_crash(run(strategy, ["a", "b", "c"], clock, store=SqliteArtifactStore(store)))
    results = await run(strategy, ["a", "b", "c"], clock, store=SqliteArtifactStore(store))
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1
    assert server.counts["batches_list"] == 1


async def test_jobs_are_split_to_the_inline_request_limit(
    server: GeminiServer, client: genai.Client, clock: JumpClock
) -> None:
    strategy = strategy_for(client)
    strategy.batch_limits = BatchLimits(max_requests=4, max_bytes=20_000_000)
    results = await run(strategy, [f"split {i}" for i in range(10)], clock)
    assert all(r.success for r in results.values())
    assert [len(job.lines) for job in server.batch_jobs.values()] == [4, 4, 2]


async def test_a_request_carries_what_execute_sends(client: genai.Client) -> None:
    strategy = GeminiStrategy(
        GeminiModel(MODEL, client, system_instruction="Be brief."), text, temperature=0.3
    )
    line = strategy.batch_line("abl-x-1", "hello")
    assert line.group == MODEL
    assert line.payload == {
        "contents": "hello",
        "config": {"temperature": 0.3, "system_instruction": "Be brief."},
        "metadata": {"key": "abl-x-1"},
    }


async def test_a_strategy_over_another_model_is_refused_before_submitting(
    server: GeminiServer, clock: JumpClock
) -> None:
    class Echo:
        async def generate(self, prompt: str, *, temperature: float = 0.0) -> LLMResponse:
            return LLMResponse(prompt, 1, 1, 2)

    strategy = GeminiStrategy(Echo(), text)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"GeminiStrategy has none \(its model is a Echo; Gemini batch jobs need a",
    ):
        await run(strategy, ["x"], clock)
    assert server.counts["batches_create"] == 0
