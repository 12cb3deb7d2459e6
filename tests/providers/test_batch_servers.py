"""The emulators' batch endpoints, read through the real SDKs: each job walks the provider's
states on the time scale, an expired or cancelled job keeps the lines that ran (issue 11, item 5).

Every job below has 3 lines on ``TIMING``: validating for 1 clock second, then one line a
second, then finalizing for 1 second (completed 5 s after creation); the clock only moves when
the test moves it.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types

from async_batch_llm.testing.servers import (
    AnthropicServer,
    BatchTiming,
    ErrorResponse,
    GeminiServer,
    OpenAIServer,
    ProviderRequest,
    default_respond,
)

TIMING = BatchTiming(
    time_scale=10.0, validating_seconds=10.0, seconds_per_line=10.0, finalizing_seconds=10.0
)
SHORT_WINDOW = BatchTiming(
    time_scale=10.0, validating_seconds=10.0, seconds_per_line=10.0, completion_window=25.0
)
"""Expires 2.5 s after creation, when 1 line of 3 has run."""
PROMPTS = ("one", "two", "three")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.start = self.now

    def time(self) -> float:
        return self.now

    def at(self, seconds: float) -> None:
        """Move to ``seconds`` after the start."""
        self.now = self.start + seconds


def failing_two(request: ProviderRequest) -> Any:
    """Line "two" is answered with a 400 (a scripted per-line failure)."""
    if request.prompt == "two":
        return ErrorResponse(400, "scripted failure")
    return default_respond(request)


async def openai_job(sdk: openai.AsyncOpenAI) -> str:
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": p}]},
        }
        for i, p in enumerate(PROMPTS)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = await sdk.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def read_lines(sdk: openai.AsyncOpenAI, file_id: str | None) -> dict[str, Any]:
    if file_id is None:
        return {}
    text = (await sdk.files.content(file_id)).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


async def test_an_openai_batch_walks_the_states_and_answers_each_line_on_time() -> None:
    clock = Clock()
    async with (
        OpenAIServer(clock=clock.time, batch_timing=TIMING, respond=failing_two) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as sdk,
    ):
        job_id = await openai_job(sdk)
        seen = []
        for moment in (0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5):
            clock.at(moment)
            batch = await sdk.batches.retrieve(job_id)
            assert batch.request_counts is not None
            counts = batch.request_counts
            seen.append((batch.status, counts.completed, counts.failed))
        assert seen == [
            ("validating", 0, 0),
            ("validating", 0, 0),
            ("in_progress", 0, 0),
            ("in_progress", 1, 0),
            ("in_progress", 1, 1),  # "two" failed (scripted)
            ("finalizing", 2, 1),
            ("completed", 2, 1),
        ]
        outputs = await read_lines(sdk, batch.output_file_id)
        errors = await read_lines(sdk, batch.error_file_id)
    assert sorted(outputs) == ["c0", "c2"]
    assert outputs["c0"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: one"
    assert errors["c1"]["response"]["status_code"] == 400


async def test_an_expired_or_cancelled_openai_batch_keeps_the_lines_that_ran() -> None:
    clock = Clock()
    async with (
        OpenAIServer(clock=clock.time, batch_timing=SHORT_WINDOW) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as sdk,
    ):
        expiring = await openai_job(sdk)
        clock.at(3.0)  # past the window: only the first line ran
        expired = await sdk.batches.retrieve(expiring)
        assert expired.status == "expired"
        assert sorted(await read_lines(sdk, expired.output_file_id)) == ["c0"]
        not_run = await read_lines(sdk, expired.error_file_id)
        assert {k: v["error"]["code"] for k, v in not_run.items()} == {
            "c1": "batch_expired",
            "c2": "batch_expired",
        }

        server.batch_timing = TIMING
        cancelled_id = await openai_job(sdk)
        clock.at(5.5)  # 2.5 s after creation: one line ran
        assert (await sdk.batches.retrieve(cancelled_id)).status == "in_progress"
        assert (await sdk.batches.cancel(cancelled_id)).status == "cancelling"
        cancelled = await sdk.batches.retrieve(cancelled_id)
        assert cancelled.status == "cancelled"
        assert sorted(await read_lines(sdk, cancelled.output_file_id)) == ["c0"]
        codes = {
            v["error"]["code"] for v in (await read_lines(sdk, cancelled.error_file_id)).values()
        }
        assert codes == {"batch_cancelled"}


async def test_an_anthropic_message_batch_walks_its_states_and_counts_each_request() -> None:
    clock = Clock()
    async with (
        AnthropicServer(clock=clock.time, batch_timing=TIMING) as server,
        anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0) as sdk,
    ):
        requests: Any = [
            {
                "custom_id": f"a{i}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": p}],
                },
            }
            for i, p in enumerate(PROMPTS)
        ]
        created = await sdk.messages.batches.create(requests=requests)
        seen = []
        for moment in (0.0, 2.5, 5.5):
            clock.at(moment)
            batch = await sdk.messages.batches.retrieve(created.id)
            counts = batch.request_counts
            seen.append((batch.processing_status, counts.processing, counts.succeeded))
        assert seen == [("in_progress", 3, 0), ("in_progress", 2, 1), ("ended", 0, 3)]

        server.batch_timing = SHORT_WINDOW
        expiring = await sdk.messages.batches.create(requests=requests)
        clock.at(8.5)  # 3 s after creation: past the window, one request ran
        expired = await sdk.messages.batches.retrieve(expiring.id)
        assert expired.processing_status == "ended"
        assert (expired.request_counts.succeeded, expired.request_counts.expired) == (1, 2)
        kinds = {
            line.custom_id: line.result.type
            async for line in await sdk.messages.batches.results(expiring.id)
        }
    assert kinds == {"a0": "succeeded", "a1": "expired", "a2": "expired"}


async def test_a_gemini_batch_job_walks_its_states_and_keeps_what_ran_when_cancelled() -> None:
    clock = Clock()
    async with GeminiServer(clock=clock.time, batch_timing=TIMING) as server:
        sdk = genai.Client(api_key="t", http_options=types.HttpOptions(base_url=server.url))
        try:
            src: Any = [
                {"contents": p, "metadata": {"key": f"g{i}"}} for i, p in enumerate(PROMPTS)
            ]
            job = await sdk.aio.batches.create(model="gemini-2.5-flash", src=src)
            assert job.name is not None
            states = []
            for moment in (0.0, 1.5, 5.5):
                clock.at(moment)
                states.append((await sdk.aio.batches.get(name=job.name)).state)
            assert states == [
                types.JobState.JOB_STATE_PENDING,
                types.JobState.JOB_STATE_RUNNING,
                types.JobState.JOB_STATE_SUCCEEDED,
            ]
            done = await sdk.aio.batches.get(name=job.name)
            assert done.dest is not None
            responses = done.dest.inlined_responses or []
            assert [(r.metadata or {}).get("key") for r in responses] == ["g0", "g1", "g2"]
            assert responses[0].response is not None
            assert responses[0].response.text == "echo: one"

            cancelling = await sdk.aio.batches.create(model="gemini-2.5-flash", src=src)
            assert cancelling.name is not None
            clock.at(8.0)  # 2.5 s after creation: one request ran
            assert (await sdk.aio.batches.get(name=cancelling.name)).state == (
                types.JobState.JOB_STATE_RUNNING
            )
            await sdk.aio.batches.cancel(name=cancelling.name)
            cancelled = await sdk.aio.batches.get(name=cancelling.name)
            assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
            assert cancelled.dest is not None
            kept = cancelled.dest.inlined_responses or []
            assert [(r.metadata or {}).get("key") for r in kept] == ["g0"]
        finally:
            await sdk.aio.aclose()
