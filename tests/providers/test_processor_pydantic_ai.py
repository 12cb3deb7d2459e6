"""``PydanticAIStrategy`` with real pydantic-ai ``Agent``\\ s, through ``ParallelBatchProcessor``.

Two models, each talking HTTP to a local server through the real SDK: pydantic-ai's
``OpenAIChatModel`` (``openai.AsyncOpenAI``, ``max_retries=0``) and ``GoogleModel``
(``google-genai``, which does not retry). Agents declare ``output_type=City``; pydantic-ai asks
for it with a forced ``final_result`` tool call.

Every reply is answered by :class:`Ledger` with explicit, distinct token counts, so the tests can
compare the batch's token totals with exactly what the server reported across all requests,
failed attempts included (spec D9).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models import Model
from pydantic_ai.models.google import GoogleModel, GoogleModelSettings
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BatchResult,
    PydanticAIStrategy,
    TokenUsage,
)
from async_batch_llm.testing.servers import (
    GeminiServer,
    Malformed,
    OpenAIServer,
    ProviderRequest,
    ProviderServer,
    Reply,
    ServerError,
    ToolCall,
)

from ._support import run as run_batch

pytestmark = pytest.mark.timeout(15)

GPT = "gpt-4o-mini"
GEMINI = "gemini-2.5-flash"


class City(BaseModel):
    name: str
    population: int


class Ledger:
    """A response function: a ``City`` for the prompt, with explicit token counts it records.

    Request ``i`` reports ``100 + 10 * i`` input and ``1 + i`` output tokens.
    """

    def __init__(self) -> None:
        self.reported: list[tuple[str, int, int]] = []

    def __call__(self, request: ProviderRequest) -> Reply:
        input_tokens, output_tokens = 100 + 10 * request.index, 1 + request.index
        self.reported.append((request.prompt, input_tokens, output_tokens))
        city = {"name": request.prompt, "population": len(request.prompt)}
        tool = request.forced_tool
        if tool is None:
            return Reply(
                text=json.dumps(city), input_tokens=input_tokens, output_tokens=output_tokens
            )
        return Reply(
            tool_calls=(ToolCall(tool.name, city),),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def usage(self, prompt: str | None = None) -> TokenUsage:
        """What the server reported, over every request (or those for ``prompt``)."""
        rows = [row for row in self.reported if prompt is None or row[0] == prompt]
        spent_in = sum(row[1] for row in rows)
        spent_out = sum(row[2] for row in rows)
        return {
            "input_tokens": spent_in,
            "output_tokens": spent_out,
            "total_tokens": spent_in + spent_out,
        }


@dataclass
class Backend:
    """A local server and the pydantic-ai model talking to it through the real SDK."""

    server: ProviderServer
    model: Model


async def run(
    agent: Agent[None, Any], prompts: list[str], *, workers: int = 1, attempts: int = 3
) -> BatchResult[Any, None]:
    return await run_batch(
        PydanticAIStrategy[Any](agent), prompts, workers=workers, attempts=attempts
    )


@asynccontextmanager
async def openai_backend() -> AsyncIterator[Backend]:
    async with OpenAIServer(respond=Ledger()) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        try:
            provider = OpenAIProvider(openai_client=client)
            yield Backend(server, OpenAIChatModel(GPT, provider=provider))
        finally:
            await client.close()


@asynccontextmanager
async def google_backend() -> AsyncIterator[Backend]:
    async with GeminiServer(respond=Ledger()) as server:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
        try:
            yield Backend(server, GoogleModel(GEMINI, provider=GoogleProvider(client=client)))
        finally:
            await client.aio.aclose()


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    "openai": openai_backend,
    "google": google_backend,
}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param]() as value:
        yield value


def ledger(backend: Backend) -> Ledger:
    respond = backend.server.respond
    assert isinstance(respond, Ledger)
    return respond


def generation_requests(backend: Backend) -> int:
    return sum(backend.server.counts[kind] for kind in backend.server.generation_kinds)


# --------------------------------------------------------------------------- tests


async def test_batch_outputs_tokens_and_request_counts(backend: Backend) -> None:
    prompts = [f"City{i}" for i in range(8)]
    backend.server.latency = 0.02  # long enough for the four workers to overlap

    result = await run(Agent(backend.model, output_type=City), prompts, workers=4)

    assert (result.succeeded, result.failed) == (8, 0)
    for item in result.results:
        assert item.output == City(name=item.item_id, population=len(item.item_id))
        assert item.token_usage == ledger(backend).usage(item.item_id)
    total = ledger(backend).usage()
    assert (result.total_input_tokens, result.total_output_tokens) == (
        total["input_tokens"],
        total["output_tokens"],
    )
    assert backend.server.request_count == generation_requests(backend) == 8
    assert backend.server.max_in_flight == 4


async def test_validation_failure_is_retried_by_the_processor(backend: Backend) -> None:
    # Attempt 1: the reply and pydantic-ai's own output retry are both malformed, so the run
    # raises UnexpectedModelBehavior. Attempt 2 (the processor's retry) gets a valid reply.
    backend.server.script(Malformed(), Malformed())

    result = await run(Agent(backend.model, output_type=City), ["Rome"])

    [item] = result.results
    assert item.success is True
    assert item.output == City(name="Rome", population=4)
    assert backend.server.request_count == 3
    assert len(ledger(backend).reported) == 3
    assert item.token_usage == ledger(backend).usage()  # all three requests, failed ones too
    assert result.total_input_tokens == 100 + 110 + 120
    assert result.total_output_tokens == 1 + 2 + 3


async def test_exhausted_validation_failures_report_every_request(backend: Backend) -> None:
    backend.server.script(*[Malformed()] * 4)

    result = await run(Agent(backend.model, output_type=City), ["Rome"], attempts=2)

    [item] = result.results
    assert item.success is False
    assert item.error == "UnexpectedModelBehavior: Exceeded maximum output retries (1)"
    spent = ledger(backend).usage()
    assert item.token_usage == {**spent, "cached_input_tokens": 0}
    assert spent["input_tokens"] == 100 + 110 + 120 + 130
    assert backend.server.request_count == 4


async def test_http_error_after_a_reply_still_counts_the_reply(backend: Backend) -> None:
    # Attempt 1: a malformed reply (tokens spent), then a 500 on pydantic-ai's output retry.
    backend.server.script(Malformed(), ServerError(500))

    result = await run(Agent(backend.model, output_type=City), ["Rome"])

    [item] = result.results
    assert item.output == City(name="Rome", population=4)
    assert backend.server.request_count == 3
    assert [row[1:] for row in ledger(backend).reported] == [(100, 1), (120, 3)]  # no reply to #2
    assert item.token_usage == ledger(backend).usage()


async def test_plain_text_agent_reads_run_usage() -> None:
    async with openai_backend() as backend:
        backend.server.respond = lambda request: Reply(
            text=f"about {request.prompt}", input_tokens=7, output_tokens=2
        )
        result = await run(Agent(backend.model), ["Lima", "Quito"])

        assert sorted(str(r.output) for r in result.results) == ["about Lima", "about Quito"]
        assert all(
            r.token_usage == {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
            for r in result.results
        )
        assert backend.server.request_count == 2


async def test_gemini_cached_content_is_part_of_input_tokens() -> None:
    async with GeminiServer() as server:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
        try:
            cache = await client.aio.caches.create(
                model=GEMINI, config=types.CreateCachedContentConfig(contents="a b c d e")
            )
            assert cache.name is not None
            settings = GoogleModelSettings(google_cached_content=cache.name)
            model = GoogleModel(GEMINI, provider=GoogleProvider(client=client))
            result = await run(Agent(model, model_settings=settings), ["hello world"])
        finally:
            await client.aio.aclose()

    [item] = result.results
    assert item.output == "echo: hello world"
    # pydantic-ai reports the whole prompt (2 words + 5 cached) as input and the cached part as
    # cache_read_tokens, which PydanticAIStrategy passes on as cached_input_tokens.
    assert item.token_usage == {
        "input_tokens": 7,
        "output_tokens": 3,
        "total_tokens": 10,
        "cached_input_tokens": 5,
    }
    assert result.cache_hit_rate() == 5 / 7 * 100.0
    assert server.counts == {"cache_create": 1, "generate_content": 1}
