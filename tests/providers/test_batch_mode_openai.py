"""ProcessorConfig(mode="batch") with OpenAIStrategy: the real ``openai`` SDK against the emulator's
Files + Batches endpoints.

Time: the emulator and the processor share one :class:`JumpClock`, whose ``sleep`` moves time
forward at once, so jobs that take simulated minutes finish instantly and every poll wait is
recorded exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    process_prompts,
)
from async_batch_llm._strategies.batch_api import BatchLimits
from async_batch_llm.core import GuardrailConfig, PriceTable
from async_batch_llm.llm_strategies import OpenAIStrategy
from async_batch_llm.middleware import BaseMiddleware
from async_batch_llm.observers import ExtendedEvent, ProcessingEvent
from async_batch_llm.testing.servers import (
    BatchTiming,
    ErrorResponse,
    OpenAIServer,
    ProviderRequest,
    ServerError,
    default_respond,
)
from tests.conftest import EventRecorder, ScriptedStrategy


class JumpClock:
    """A clock whose ``sleep`` jumps time forward at once, recording every wait."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def timing() -> BatchTiming:
    return BatchTiming()


@pytest.fixture
async def server(clock: JumpClock, timing: BatchTiming) -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(clock=clock.time, batch_timing=timing, prompt_caching=False) as running:
        yield running


@pytest.fixture
async def client(server: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0
    ) as sdk_client:
        yield sdk_client


def config(**overrides: Any) -> ProcessorConfig:
    settings: dict[str, Any] = {
        "max_workers": 4,
        "timeout_per_item": 10.0,
        "retry": RetryConfig(max_attempts=3, initial_wait=0.01, max_wait=0.01, jitter=False),
        "rate_limit": RateLimitConfig(
            cooldown_seconds=0.0,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
        "guardrails": GuardrailConfig(cost_function=PriceTable.default().cost),
        "mode": "batch",
    }
    settings.update(overrides)
    return ProcessorConfig(**settings)


async def run(
    items: list[tuple[str, OpenAIStrategy[Any], str]],
    clock: JumpClock,
    cfg: ProcessorConfig | None = None,
    observers: list[Any] | None = None,
) -> dict[str, Any]:
    async with ParallelBatchProcessor[str, Any, None](
        config=cfg or config(), clock=clock, observers=observers
    ) as processor:
        for item_id, strategy, prompt in items:
            await processor.add_work(LLMWorkItem(item_id=item_id, strategy=strategy, prompt=prompt))
        batch = await processor.process_all()
    return {result.item_id: result for result in batch.results}


def prompts(n: int) -> list[str]:
    return [f"tell me about item {i} {'and more ' * (i % 5)}".strip() for i in range(n)]


def input_lines(server: OpenAIServer) -> list[list[dict[str, Any]]]:
    """The request lines of every job, job by job."""
    return [
        [{"custom_id": cid, "body": body} for cid, body in job.lines]
        for job in server.batch_jobs.values()
    ]


async def test_a_batch_returns_the_online_outputs_and_tokens_at_half_the_cost(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    texts = prompts(1000)
    work = [(f"item-{i}", strategy, text) for i, text in enumerate(texts)]
    batch = await run(work, clock)
    online = await run(work, clock, config(mode="online"))

    assert len(batch) == len(online) == 1000
    assert all(result.success for result in batch.values())
    assert {k: r.output for k, r in batch.items()} == {k: r.output for k, r in online.items()}
    assert {k: r.token_usage for k, r in batch.items()} == {
        k: r.token_usage for k, r in online.items()
    }
    batch_cost = sum(r.cost or 0.0 for r in batch.values())
    online_cost = sum(r.cost or 0.0 for r in online.values())
    assert online_cost > 0
    assert batch_cost == pytest.approx(online_cost / 2)
    # One job (1000 lines is within OpenAI's limits), every line submitted once.
    assert len(server.batch_jobs) == 1
    assert len(server.batch_line_submissions) == 1000
    assert set(server.batch_line_submissions.values()) == {1}
    assert server.counts["chat_completions"] == 1000  # the online run only


async def test_jobs_are_split_by_requests_per_job_and_bytes_per_file(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    strategy.batch_limits = BatchLimits(max_requests=4, max_bytes=10_000)
    results = await run([(f"a{i}", strategy, f"short {i}") for i in range(10)], clock)
    assert all(r.success for r in results.values())
    assert [len(job.lines) for job in server.batch_jobs.values()] == [4, 4, 2]

    sized = OpenAIStrategy(client, "gpt-4o-mini")
    one_line = sized.batch_line("abl-0123456789ab-1", "word " * 40).size  # the runner's ids
    sized.batch_limits = BatchLimits(max_requests=100, max_bytes=one_line * 3 + 10)
    before = len(server.batch_jobs)
    results = await run([(f"b{i}", sized, "word " * 40) for i in range(7)], clock)
    assert all(r.success for r in results.values())
    sizes = [len(job.lines) for job in list(server.batch_jobs.values())[before:]]
    assert sizes == [3, 3, 1]


async def test_a_mixed_batch_is_split_into_one_job_per_model(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    mini = OpenAIStrategy(client, "gpt-4o-mini")
    full = OpenAIStrategy(client, "gpt-4o")
    work = [(f"m{i}", mini if i % 2 else full, f"prompt {i}") for i in range(6)]
    results = await run(work, clock)
    assert all(r.success for r in results.values())
    models = [{body["model"] for _, body in job.lines} for job in server.batch_jobs.values()]
    assert sorted(map(sorted, models)) == [["gpt-4o"], ["gpt-4o-mini"]]
    assert all(job.state == "completed" for job in server.batch_jobs.values())


async def test_an_item_over_the_per_line_limit_fails_alone_naming_the_limit(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    strategy.batch_limits = BatchLimits(max_requests=100, max_bytes=100_000, max_line_bytes=400)
    results = await run([("small", strategy, "hello"), ("huge", strategy, "word " * 500)], clock)
    assert results["small"].success
    huge = results["huge"]
    assert not huge.success
    assert huge.error_category == "bad_request"
    assert "400 bytes" in (huge.error or "")
    sent = [body for job in server.batch_jobs.values() for _, body in job.lines]
    assert [body["messages"][0]["content"] for body in sent] == ["hello"]


@pytest.mark.parametrize(
    "timing", [BatchTiming(expire_after_lines=3, expiring_jobs=1)], ids=["first-job-expires"]
)
async def test_an_expired_job_keeps_its_partial_results_and_the_rest_go_in_a_second_job(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    results = await run([(f"e{i}", strategy, f"expiring {i}") for i in range(10)], clock)
    assert all(r.success for r in results.values())
    jobs = list(server.batch_jobs.values())
    assert [job.state for job in jobs] == ["expired", "completed"]
    assert len(jobs[0].answers) == 3
    assert len(jobs[1].lines) == 7
    first_ids = {cid for cid, _ in jobs[0].lines}
    answered_prompts = {
        body["messages"][0]["content"] for cid, body in jobs[0].lines if cid in jobs[0].answers
    }
    second_prompts = {body["messages"][0]["content"] for _, body in jobs[1].lines}
    assert answered_prompts.isdisjoint(second_prompts)  # no finished line is paid twice
    assert len(first_ids) == 10


@pytest.mark.parametrize(
    "timing", [BatchTiming(expire_after_lines=2, expiring_jobs=1)], ids=["first-job-expires"]
)
async def test_batch_fallback_online_sends_expired_lines_as_ordinary_calls(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    cfg = config(batch_fallback="online")
    results = await run([(f"o{i}", strategy, f"fallback {i}") for i in range(5)], clock, cfg)
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1
    assert server.counts["chat_completions"] == 3  # the three lines the job never ran
    assert {r.output for r in results.values()} == {f"echo: fallback {i}" for i in range(5)}


async def test_per_line_errors_are_classified_like_online_ones(
    clock: JumpClock,
) -> None:
    answered: dict[str, int] = {}

    def respond(request: ProviderRequest) -> Any:
        answered[request.prompt] = answered.get(request.prompt, 0) + 1
        if request.prompt == "flaky" and answered["flaky"] == 1:
            return ServerError(503)
        if request.prompt == "bad":
            return ErrorResponse(400, "This request is malformed.")
        return default_respond(request)

    async with (
        OpenAIServer(clock=clock.time, respond=respond) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as sdk_client,
    ):
        strategy = OpenAIStrategy(sdk_client, "gpt-4o-mini")
        results = await run(
            [("flaky", strategy, "flaky"), ("bad", strategy, "bad"), ("ok", strategy, "ok")],
            clock,
        )
    assert results["ok"].success
    assert results["flaky"].success  # a 503 line is sent again in the next job
    assert results["flaky"].output == "echo: flaky"
    assert not results["bad"].success  # a 400 line is not
    # As online: a rejected request is a bad request (the strategy's error says so), not retried.
    assert results["bad"].error_category == "bad_request"
    assert "malformed" in (results["bad"].error or "")
    assert answered == {"flaky": 2, "bad": 1, "ok": 1}
    assert [len(job.lines) for job in server.batch_jobs.values()] == [3, 1]


class Answer(BaseModel):
    value: int


async def test_a_reply_that_does_not_validate_is_sent_again_with_its_tokens_counted(
    clock: JumpClock,
) -> None:
    calls = {"n": 0}

    def respond(request: ProviderRequest) -> Any:
        calls["n"] += 1
        return '{"value": "not a number"}' if calls["n"] == 1 else '{"value": 7}'

    async with (
        OpenAIServer(clock=clock.time, respond=respond) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as sdk_client,
    ):
        strategy = OpenAIStrategy(sdk_client, "gpt-4o-mini", output_type=Answer)
        results = await run([("v", strategy, "give me a number")], clock)
    result = results["v"]
    assert result.success
    assert result.output == Answer(value=7)
    assert len(server.batch_jobs) == 2
    # Both lines' tokens: the rejected reply was paid for too.
    assert result.token_usage["input_tokens"] == 2 * 4  # "give me a number", twice
    assert result.token_usage["output_tokens"] == 4 + 2  # the rejected reply and the good one


async def test_a_strategy_without_batch_support_is_refused_before_anything_is_submitted(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    scripted = ScriptedStrategy()
    with pytest.raises(TypeError, match="ScriptedStrategy has none"):
        await run([("a", strategy, "x"), ("b", scripted, "y")], clock)  # type: ignore[list-item]
    assert server.requests == []


def test_mode_and_batch_fallback_are_validated() -> None:
    assert ProcessorConfig().mode == "online"
    assert ProcessorConfig().batch_fallback == "batch"
    with pytest.raises(ValueError, match="mode must be one of 'online', 'batch', got 'bulk'"):
        ProcessorConfig(mode="bulk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_fallback must be one of 'batch', 'online'"):
        ProcessorConfig(batch_fallback="never")  # type: ignore[arg-type]


async def test_jobs_are_polled_with_growing_waits_on_the_processor_clock(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")  # default polling: 5 s x1.5 up to 60 s
    results = await run([(f"p{i}", strategy, f"poll {i}") for i in range(100)], clock)
    assert all(r.success for r in results.values())
    # validating 10 s + 100 lines x 1 s + finalizing 10 s = 120 simulated seconds.
    assert clock.sleeps[:5] == pytest.approx([5.0, 7.5, 11.25, 16.875, 25.3125])
    assert max(clock.sleeps) <= 60.0
    assert sum(clock.sleeps) >= 120.0
    assert server.counts["batches_retrieve"] == len(clock.sleeps) + 1  # + the results download


async def test_observers_see_job_events_and_line_results(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    recorder = ExtendedRecorder()
    plain = EventRecorder()  # a 0.6.0 observer: no job events
    await run(
        [(f"o{i}", strategy, f"observe {i}") for i in range(3)],
        clock,
        observers=[recorder, plain],
    )
    job_id = next(iter(server.batch_jobs))
    jobs = [
        (event, data)
        for event, data in recorder.events
        if isinstance(event, ExtendedEvent) and event.name.startswith("BATCH_JOB")
    ]
    kinds = [event for event, _ in jobs]
    assert kinds[0] is ExtendedEvent.BATCH_JOB_SUBMITTED
    assert kinds[-1] is ExtendedEvent.BATCH_JOB_COMPLETED
    assert set(kinds[1:-1]) == {ExtendedEvent.BATCH_JOB_PROGRESS}
    assert {data["job_id"] for _, data in jobs} == {job_id}
    assert jobs[0][1]["requests"] == 3
    # Reads at 5 s (validating 10 s), 12.5 s (2 of 3 lines at 1 s each), 23.75 s (ended).
    progress = [(data["state"], data["completed"]) for _, data in jobs[1:-1]]
    assert progress == [("validating", 0), ("in_progress", 2)]
    assert jobs[-1][1] == {
        "job_id": job_id,
        "provider": "openai",
        "requests": 3,
        "state": "completed",
        "completed": 3,
        "failed": 0,
    }
    assert not any(isinstance(event, ExtendedEvent) for event, _ in plain.events)
    completed = plain.of(ProcessingEvent.ITEM_COMPLETED)
    assert sorted(d["item_id"] for d in completed) == ["o0", "o1", "o2"]
    assert {d["batch_job_id"] for d in completed} == {job_id}


class ExtendedRecorder(EventRecorder):
    extended_events = True


async def test_a_line_carries_the_body_execute_would_send(
    client: openai.AsyncOpenAI,
) -> None:
    strategy = OpenAIStrategy(
        client, "gpt-4o-mini", output_type=Answer, temperature=0.0, extra_body={"seed": 3}
    )
    line = strategy.batch_line("abl-1", "hello")
    payload = dict(line.payload)
    assert payload["custom_id"] == "abl-1"
    assert payload["method"] == "POST"
    assert payload["url"] == "/v1/chat/completions"
    body = payload["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.0
    assert body["seed"] == 3
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["response_format"]["type"] == "json_schema"
    assert "extra_body" not in body
    assert line.group == "gpt-4o-mini"
    assert line.size == len(json.dumps(payload, separators=(",", ":")).encode()) + 1


class HeldClock(JumpClock):
    """Sleeps wait until the test releases them; after :meth:`release_all`, sleeps jump."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[float, asyncio.Future[None]]] = []
        self.jumping = False
        self.changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        if self.jumping:
            await super().sleep(seconds)
            return
        self.sleeps.append(seconds)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((seconds, waiter))
        self.changed.set()
        await waiter

    async def until_held(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.held) < count:
                self.changed.clear()
                await self.changed.wait()

    def release_longest(self) -> None:
        """Jump time by the longest held sleep and wake it; from now on sleeps jump."""
        self.jumping = True
        seconds, waiter = max(self.held, key=lambda held: held[0])
        self.held.remove((seconds, waiter))
        self.now += seconds
        waiter.set_result(None)


async def test_cancelling_the_batch_cancels_its_provider_jobs(
    client: openai.AsyncOpenAI, server: OpenAIServer
) -> None:
    clock = HeldClock()
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    task = asyncio.create_task(run([(f"c{i}", strategy, f"cancel {i}") for i in range(4)], clock))
    await clock.until_held(1)  # the runner waits before its first poll
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [job] = server.batch_jobs.values()
    assert job.state == "cancelling"
    assert server.counts["batches_cancel"] == 1


@pytest.mark.parametrize(
    "timing", [BatchTiming(seconds_per_line=100.0)], ids=["100-seconds-per-line"]
)
async def test_a_batch_timeout_cancels_the_job_and_keeps_every_finished_line(
    client: openai.AsyncOpenAI, server: OpenAIServer, timing: BatchTiming
) -> None:
    clock = HeldClock()
    server.clock = clock.time
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    cfg = config(guardrails=GuardrailConfig(batch_timeout=1000.0))
    task = asyncio.create_task(
        run([(f"t{i}", strategy, f"slow {i}") for i in range(12)], clock, cfg)
    )
    await clock.until_held(2)  # the batch timer (1000 s) and the first poll wait (5 s)
    clock.release_longest()  # 1000 s pass: validating 10 s + 9 lines of 100 s have run
    results = await task
    [job] = server.batch_jobs.values()
    assert job.state == "cancelled"
    assert server.counts["batches_cancel"] == 1
    done = sorted(k for k, r in results.items() if r.success)
    assert done == [f"t{i}" for i in range(9)]
    stopped = [r for r in results.values() if not r.success]
    assert len(stopped) == 3
    assert {r.error_category for r in stopped} == {"batch_timeout"}
    assert all(r.token_usage == {} for r in stopped)


async def test_process_prompts_in_batch_mode_takes_a_lazy_source_in_waves(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    texts = [f"stream {i}" for i in range(500)]
    result = await process_prompts(
        strategy, iter(texts), mode="batch", preserve_order=True, clock=clock
    )
    assert [r.output for r in result.results] == [f"echo: {t}" for t in texts]
    assert len(server.batch_jobs) > 1  # waves of the feed's capacity, one job each
    assert sum(len(job.lines) for job in server.batch_jobs.values()) == 500
    assert server.counts["chat_completions"] == 0


@pytest.mark.parametrize(
    "timing", [BatchTiming(expire_after_lines=5, expiring_jobs=1)], ids=["first-job-expires"]
)
async def test_a_lazy_source_with_online_fallback_sends_expired_lines_online(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    cfg = config(mode="batch", batch_fallback="online")
    result = await process_prompts(
        strategy, [f"lazy {i}" for i in range(300)], config=cfg, clock=clock
    )
    assert result.succeeded == 300
    first = next(iter(server.batch_jobs.values()))
    assert server.counts["chat_completions"] == len(first.lines) - 5


async def test_process_prompts_refuses_batch_mode_for_a_strategy_without_it() -> None:
    read: list[int] = []

    def source() -> Iterator[str]:
        read.append(1)
        yield "never read"

    with pytest.raises(TypeError, match="ScriptedStrategy has none"):
        await process_prompts(ScriptedStrategy(), source(), mode="batch")
    assert read == []


async def test_batch_mode_refuses_middlewares(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    processor = ParallelBatchProcessor[str, Any, None](
        config=config(), clock=clock, middlewares=[BaseMiddleware()]
    )
    await processor.add_work(LLMWorkItem(item_id="m", strategy=strategy, prompt="x"))
    with pytest.raises(TypeError, match="does not run middlewares"):
        await processor.process_all()
    assert server.requests == []


async def test_a_failed_results_download_is_tried_again_without_submitting_again(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    server.script(ServerError(503), ServerError(503), kind="files_content")
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    results = await run([(f"d{i}", strategy, f"download {i}") for i in range(3)], clock)
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1
    assert server.status_counts[503] == 2


async def test_a_job_the_provider_refused_to_create_is_submitted_again_after_a_wait(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock
) -> None:
    server.script(ServerError(500), kind="batches_create")
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    results = await run([(f"j{i}", strategy, f"create {i}") for i in range(3)], clock)
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1  # the refused create made no job
    assert clock.sleeps[0] == 5.0  # the wait before submitting again
    assert server.counts["batches_create"] == 2
