"""The local provider servers, driven by the real SDKs over HTTP (no SDK internals mocked).

Token counts in these tests are exact because every server counts whitespace-separated words
(at least 1): ``"echo: hello there world"`` is 4 tokens.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelRateLimitError, UnexpectedModelBehavior
from pydantic_ai.models.google import GoogleModel, GoogleModelSettings
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm.testing.servers import (
    AnthropicServer,
    Disconnect,
    ErrorResponse,
    GeminiServer,
    Hang,
    Latency,
    Malformed,
    OpenAIServer,
    ProviderRequest,
    RateLimited,
    Reply,
    ResponseValue,
    ServerError,
    ToolCall,
    count_tokens,
    example_for_schema,
)

pytestmark = pytest.mark.timeout(10)

GEMINI = "gemini-2.5-flash"
GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-5"
T0 = 1_750_000_000.0


class City(BaseModel):
    name: str
    population: int


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gemini(clock: Clock) -> AsyncIterator[GeminiServer]:
    async with GeminiServer(clock=clock) as server:
        yield server


@pytest.fixture
async def genai_client(gemini: GeminiServer) -> AsyncIterator[genai.Client]:
    client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=gemini.url))
    yield client
    await client.aio.aclose()


@pytest.fixture
async def oai(clock: Clock) -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(clock=clock) as server:
        yield server


@pytest.fixture
async def oai_client(oai: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude(clock: Clock) -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer(clock=clock) as server:
        yield server


@pytest.fixture
async def claude_client(claude: AnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=claude.url, api_key="test", max_retries=0)
    yield client
    await client.close()


async def _chat(client: openai.AsyncOpenAI, text: str = "hello") -> str | None:
    completion = await client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content


async def _message(
    client: anthropic.AsyncAnthropic, text: str = "hello"
) -> anthropic.types.Message:
    return await client.messages.create(
        model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": text}]
    )


# ---------------------------------------------------------------------------------- Gemini


async def test_gemini_generate_content(gemini: GeminiServer, genai_client: genai.Client) -> None:
    response = await genai_client.aio.models.generate_content(
        model=GEMINI, contents="hello there world"
    )

    assert response.text == "echo: hello there world"
    candidate = response.candidates[0] if response.candidates else None
    assert candidate is not None
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.safety_ratings
    assert {r.probability for r in candidate.safety_ratings} == {types.HarmProbability.NEGLIGIBLE}
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (
        3,
        4,
        7,
    )
    assert usage.cached_content_token_count is None
    [request] = gemini.requests
    assert request.path == f"/v1/models/{GEMINI}:generateContent"  # google-genai 3.x uses /v1
    assert request.headers["x-goog-api-key"] == "test"
    assert (request.kind, request.model, request.prompt) == (
        "generate_content",
        GEMINI,
        "hello there world",
    )
    assert gemini.counts == {"generate_content": 1}
    assert gemini.path_counts == {f"/v1/models/{GEMINI}:generateContent": 1}
    assert gemini.status_counts == {200: 1}


async def test_gemini_system_instruction_and_max_output_tokens(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    response = await genai_client.aio.models.generate_content(
        model=GEMINI,
        contents="one two three four",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=3),
    )

    assert response.text == "echo: one two"
    assert response.candidates
    assert response.candidates[0].finish_reason == "MAX_TOKENS"
    assert response.usage_metadata
    assert response.usage_metadata.prompt_token_count == 2 + 4
    assert gemini.requests[0].system == "be brief"


async def test_gemini_cache_lifecycle(
    gemini: GeminiServer, genai_client: genai.Client, clock: Clock
) -> None:
    caches = genai_client.aio.caches
    created = await caches.create(
        model=GEMINI,
        config=types.CreateCachedContentConfig(
            contents="alpha beta gamma delta",
            system_instruction="you are terse",
            ttl="300s",
            display_name="docs",
        ),
    )
    assert created.name
    assert created.name.startswith("cachedContents/")
    assert created.model == f"models/{GEMINI}"
    assert created.display_name == "docs"
    assert created.create_time
    assert created.create_time.timestamp() == T0
    assert created.update_time
    assert created.update_time.timestamp() == T0
    assert created.expire_time
    assert created.expire_time.timestamp() == T0 + 300
    assert created.usage_metadata
    assert created.usage_metadata.total_token_count == 4 + 3

    fetched = await caches.get(name=created.name)
    assert fetched.name == created.name

    clock.now += 100
    renewed = await caches.update(
        name=created.name, config=types.UpdateCachedContentConfig(ttl="600s")
    )
    assert renewed.expire_time
    assert renewed.expire_time.timestamp() == T0 + 100 + 600
    assert renewed.update_time
    assert renewed.update_time.timestamp() == T0 + 100
    assert gemini.caches[created.name].expire_time == T0 + 700

    await caches.delete(name=created.name)
    with pytest.raises(genai_errors.ClientError) as caught:
        await caches.get(name=created.name)
    assert (caught.value.code, caught.value.status) == (403, "PERMISSION_DENIED")
    assert gemini.counts == {
        "cache_create": 1,
        "cache_get": 2,
        "cache_update": 1,
        "cache_delete": 1,
    }


async def test_gemini_cache_list_pages(gemini: GeminiServer, genai_client: genai.Client) -> None:
    names = []
    for i in range(3):
        cache = await genai_client.aio.caches.create(
            model=GEMINI, config=types.CreateCachedContentConfig(contents=f"document {i}")
        )
        names.append(cache.name)

    listed = [c.name async for c in await genai_client.aio.caches.list(config={"page_size": 2})]

    assert listed == names
    assert gemini.counts["cache_list"] == 2
    assert [r.query.get("pageToken") for r in gemini.requests if r.kind == "cache_list"] == [
        None,
        "page-2",
    ]


async def test_gemini_empty_cache_list(genai_client: genai.Client) -> None:
    assert [c async for c in await genai_client.aio.caches.list()] == []


async def test_gemini_cached_content_usage(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    cache = await genai_client.aio.caches.create(
        model=GEMINI,
        config=types.CreateCachedContentConfig(
            contents="alpha beta gamma delta epsilon", system_instruction="be nice"
        ),
    )
    assert cache.name is not None

    response = await genai_client.aio.models.generate_content(
        model=GEMINI,
        contents="two words",
        config=types.GenerateContentConfig(cached_content=cache.name),
    )

    usage = response.usage_metadata
    assert usage is not None
    assert usage.cached_content_token_count == 5 + 2
    assert usage.prompt_token_count == 2 + 7  # includes the cached tokens, as the real API does
    assert usage.candidates_token_count == 3
    assert usage.total_token_count == 9 + 3
    assert gemini.requests[-1].cached_content == cache.name
    assert gemini.requests[-1].system == "be nice"  # inherited from the cache
    assert cache.expire_time
    assert cache.create_time
    assert (cache.expire_time - cache.create_time).total_seconds() == 3600  # default TTL


async def test_gemini_expired_or_unknown_cache_is_403(
    gemini: GeminiServer, genai_client: genai.Client, clock: Clock
) -> None:
    cache = await genai_client.aio.caches.create(
        model=GEMINI, config=types.CreateCachedContentConfig(contents="context", ttl="60s")
    )
    assert cache.name is not None
    config = types.GenerateContentConfig(cached_content=cache.name)
    await genai_client.aio.models.generate_content(model=GEMINI, contents="q", config=config)

    clock.now += 60  # expireTime reached: gone, without sleeping
    with pytest.raises(genai_errors.ClientError) as caught:
        await genai_client.aio.models.generate_content(model=GEMINI, contents="q", config=config)
    assert caught.value.code == 403
    assert caught.value.status == "PERMISSION_DENIED"
    assert caught.value.message == "CachedContent not found (or permission denied)"
    assert gemini.caches == {}

    with pytest.raises(genai_errors.ClientError) as unknown:
        await genai_client.aio.models.generate_content(
            model=GEMINI,
            contents="q",
            config=types.GenerateContentConfig(cached_content="cachedContents/nope"),
        )
    assert unknown.value.code == 403
    assert gemini.status_counts == {200: 2, 403: 2}


async def test_gemini_cache_rejects_system_instruction_and_small_caches(
    clock: Clock,
) -> None:
    async with GeminiServer(clock=clock, min_cache_tokens=10) as server:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=server.url))
        try:
            with pytest.raises(genai_errors.ClientError) as small:
                await client.aio.caches.create(
                    model=GEMINI, config=types.CreateCachedContentConfig(contents="too small")
                )
            assert small.value.code == 400
            assert small.value.message == (
                "Cached content is too small. total_token_count=2, min_total_token_count=10"
            )
            cache = await client.aio.caches.create(
                model=GEMINI, config=types.CreateCachedContentConfig(contents="w " * 10)
            )
            with pytest.raises(genai_errors.ClientError) as conflict:
                await client.aio.models.generate_content(
                    model=GEMINI,
                    contents="q",
                    config=types.GenerateContentConfig(
                        cached_content=cache.name, system_instruction="again"
                    ),
                )
            assert conflict.value.code == 400
            assert conflict.value.status == "INVALID_ARGUMENT"
            assert conflict.value.message
            assert conflict.value.message.startswith(
                "CachedContent can not be used with GenerateContent request setting "
                "system_instruction, tools or tool_config."
            )
        finally:
            await client.aio.aclose()


async def test_gemini_rate_limited_carries_retry_info(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    gemini.script(RateLimited(retry_after=2.0))

    with pytest.raises(genai_errors.ClientError) as caught:
        await genai_client.aio.models.generate_content(model=GEMINI, contents="x")

    error = caught.value
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    details = error.details["error"]["details"]
    retry_info = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert retry_info == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]
    assert gemini.counts["generate_content"] == 1  # google-genai does not retry by default
    assert gemini.fault_counts == {"RateLimited": 1}
    assert gemini.exchanges[0].status == 429


async def test_gemini_server_errors(gemini: GeminiServer, genai_client: genai.Client) -> None:
    gemini.script(ServerError(503), ServerError(500), ErrorResponse(400, "bad field"))

    with pytest.raises(genai_errors.ServerError) as unavailable:
        await genai_client.aio.models.generate_content(model=GEMINI, contents="x")
    with pytest.raises(genai_errors.ServerError) as internal:
        await genai_client.aio.models.generate_content(model=GEMINI, contents="x")
    with pytest.raises(genai_errors.ClientError) as bad:
        await genai_client.aio.models.generate_content(model=GEMINI, contents="x")

    assert (unavailable.value.code, unavailable.value.status) == (503, "UNAVAILABLE")
    assert (internal.value.code, internal.value.status) == (500, "INTERNAL")
    assert (bad.value.code, bad.value.status, bad.value.message) == (
        400,
        "INVALID_ARGUMENT",
        "bad field",
    )
    assert gemini.pending_faults() == 0


async def test_gemini_sdk_retries_when_enabled(gemini: GeminiServer) -> None:
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.01, jitter=0)
    client = genai.Client(
        api_key="test", http_options=types.HttpOptions(base_url=gemini.url, retry_options=retry)
    )
    gemini.script(RateLimited(), ServerError(503))
    try:
        response = await client.aio.models.generate_content(model=GEMINI, contents="retry me")
    finally:
        await client.aio.aclose()

    assert response.text == "echo: retry me"
    assert gemini.counts["generate_content"] == 3
    assert [e.status for e in gemini.exchanges] == [429, 503, 200]


async def test_gemini_hang_is_cut_by_client_timeout(gemini: GeminiServer) -> None:
    client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=gemini.url))
    gemini.script(Hang())
    short = types.GenerateContentConfig(http_options=types.HttpOptions(timeout=200))  # ms
    try:
        with pytest.raises(httpx2.ReadTimeout):  # google-genai does not wrap transport errors
            await client.aio.models.generate_content(model=GEMINI, contents="x", config=short)
        response = await client.aio.models.generate_content(model=GEMINI, contents="again")
        assert response.text == "echo: again"
    finally:
        await client.aio.aclose()
    for _ in range(100):
        if gemini.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert gemini.in_flight == 0
    assert gemini.exchanges[0].status is None
    assert isinstance(gemini.exchanges[0].fault, Hang)


async def test_gemini_stream_and_count_tokens(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    chunks = [
        chunk
        async for chunk in await genai_client.aio.models.generate_content_stream(
            model=GEMINI, contents="one two three four"
        )
    ]
    assert "".join(c.text or "" for c in chunks) == "echo: one two three four"
    assert chunks[-1].usage_metadata
    assert chunks[-1].usage_metadata.total_token_count == 4 + 5

    counted = await genai_client.aio.models.count_tokens(model=GEMINI, contents="a b c")
    assert counted.total_tokens == 3
    assert gemini.counts == {"stream_generate_content": 1, "count_tokens": 1}


async def test_gemini_structured_output_and_malformed(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=City
    )
    good = await genai_client.aio.models.generate_content(
        model=GEMINI, contents="Lyon", config=config
    )
    assert good.parsed == City(name="Lyon", population=0)

    gemini.script(Malformed())
    bad = await genai_client.aio.models.generate_content(
        model=GEMINI, contents="Lyon", config=config
    )
    assert bad.text == '{"malformed": '
    assert bad.parsed is None
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.text)


async def test_pydantic_ai_google_model_structured_output(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    agent = Agent(
        GoogleModel(GEMINI, provider=GoogleProvider(client=genai_client)), output_type=City
    )

    result = await agent.run("Nice")

    assert result.output == City(name="Nice", population=0)
    [request] = gemini.requests
    assert request.tool_choice == "required"  # pydantic-ai sends mode ANY with a final_result tool
    assert [t.name for t in request.tools] == ["final_result"]
    assert result.usage.input_tokens == 1
    assert result.usage.output_tokens == count_tokens('final_result {"name":"Nice","population":0}')


async def test_pydantic_ai_google_cached_content_usage(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    cache = await genai_client.aio.caches.create(
        model=GEMINI, config=types.CreateCachedContentConfig(contents="a b c d e")
    )
    assert cache.name is not None
    agent = Agent(GoogleModel(GEMINI, provider=GoogleProvider(client=genai_client)))

    result = await agent.run(
        "hello world", model_settings=GoogleModelSettings(google_cached_content=cache.name)
    )

    assert result.output == "echo: hello world"
    assert result.usage.input_tokens == 2 + 5  # pydantic-ai reports the total prompt...
    assert result.usage.cache_read_tokens == 5  # ...and the cached part separately


async def test_pydantic_ai_google_rate_limit(
    gemini: GeminiServer, genai_client: genai.Client
) -> None:
    agent = Agent(GoogleModel(GEMINI, provider=GoogleProvider(client=genai_client)))
    gemini.script(RateLimited(retry_after=4.0))

    with pytest.raises(ModelRateLimitError) as caught:
        await agent.run("x")

    assert caught.value.status_code == 429  # type: ignore[attr-defined]
    assert caught.value.retry_after is None  # pydantic-ai does not read Gemini's RetryInfo...
    cause = caught.value.__cause__
    assert isinstance(cause, genai_errors.ClientError)  # ...but the SDK error it wraps has it
    assert cause.details["error"]["details"][-1]["retryDelay"] == "4s"


# ---------------------------------------------------------------------------------- OpenAI


async def test_openai_chat_completion(oai: OpenAIServer, oai_client: openai.AsyncOpenAI) -> None:
    completion = await oai_client.chat.completions.create(
        model=GPT,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    )

    choice = completion.choices[0]
    assert choice.message.content == "echo: hello there"
    assert choice.finish_reason == "stop"
    assert completion.model == GPT
    assert completion.created == int(T0)
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 3, 7)
    assert usage.prompt_tokens_details
    assert usage.prompt_tokens_details.cached_tokens == 0
    [request] = oai.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test"
    assert (request.system, request.prompt) == ("be brief", "hello there")


async def test_openai_prompt_cache_tokens(
    oai: OpenAIServer, oai_client: openai.AsyncOpenAI, clock: Clock
) -> None:
    shared = "word " * 1300

    async def cached(question: str) -> int:
        completion = await oai_client.chat.completions.create(
            model=GPT,
            messages=[
                {"role": "system", "content": shared},
                {"role": "user", "content": question},
            ],
        )
        assert completion.usage
        assert completion.usage.prompt_tokens == 1301
        details = completion.usage.prompt_tokens_details
        assert details is not None
        assert details.cached_tokens is not None
        return details.cached_tokens

    assert await cached("first") == 0
    assert await cached("second") == 1024 + 2 * 128  # 128-token increments from 1024
    clock.now += 601  # unused longer than prompt_cache_ttl
    assert await cached("third") == 0


async def test_openai_rate_limited_headers(
    oai: OpenAIServer, oai_client: openai.AsyncOpenAI
) -> None:
    oai.script(RateLimited(retry_after=2.0))

    with pytest.raises(openai.RateLimitError) as caught:
        await _chat(oai_client)

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["retry-after-ms"] == "2000"
    assert error.request_id
    assert error.request_id.startswith("req_")
    assert error.code == "rate_limit_exceeded"
    assert isinstance(error.body, dict)
    assert error.body["type"] == "requests"
    assert oai.counts["chat_completions"] == 1  # max_retries=0


async def test_openai_sdk_retries_honour_retry_after(oai: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="test", max_retries=2)
    oai.script(RateLimited(retry_after=0.01), ServerError(503, retry_after=0.01))
    try:
        assert await _chat(client, "eventually") == "echo: eventually"
    finally:
        await client.close()

    assert oai.counts["chat_completions"] == 3
    assert [r.headers["x-stainless-retry-count"] for r in oai.requests] == ["0", "1", "2"]


async def test_openai_server_errors(oai: OpenAIServer, oai_client: openai.AsyncOpenAI) -> None:
    oai.script(ServerError(500), ServerError(503), ErrorResponse(401))

    with pytest.raises(openai.InternalServerError) as internal:
        await _chat(oai_client)
    with pytest.raises(openai.InternalServerError) as unavailable:
        await _chat(oai_client)
    with pytest.raises(openai.AuthenticationError):
        await _chat(oai_client)

    assert internal.value.status_code == 500
    assert unavailable.value.status_code == 503
    assert oai.status_counts == {500: 1, 503: 1, 401: 1}


async def test_openai_hang_and_disconnect(oai: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="test", max_retries=0)
    oai.script(Hang(), Disconnect())
    try:
        with pytest.raises(openai.APITimeoutError):
            await _chat(client.with_options(timeout=0.2))
        with pytest.raises(openai.APIConnectionError) as dropped:
            await _chat(client)
        assert await _chat(client, "fine") == "echo: fine"
    finally:
        await client.close()
    assert not isinstance(dropped.value, openai.APITimeoutError)
    assert oai.fault_counts == {"Hang": 1, "Disconnect": 1}


async def test_openai_latency_and_concurrency(
    oai: OpenAIServer, oai_client: openai.AsyncOpenAI
) -> None:
    oai.latency = 0.05
    oai.script(Latency(0.1))
    started = time.monotonic()

    replies = await asyncio.gather(*(_chat(oai_client, f"n{i}") for i in range(5)))

    assert sorted(r or "" for r in replies) == [f"echo: n{i}" for i in range(5)]
    assert 0.15 <= time.monotonic() - started < 2.0
    assert oai.max_in_flight == 5
    assert oai.in_flight == 0
    assert oai.fault_counts == {"Latency": 1}


async def test_openai_respond_and_fault_fn(
    oai: OpenAIServer, oai_client: openai.AsyncOpenAI
) -> None:
    def respond(request: ProviderRequest) -> ResponseValue:
        if request.prompt == "tool":
            return ToolCall("lookup", {"q": 1}, id="call_fixed")
        if request.prompt == "reply":
            return Reply(text="custom", output_tokens=42, cached_tokens=1, input_tokens=7)
        return f"#{request.kind_index} {request.prompt.upper()}"

    oai.respond = respond
    oai.fault_fn = lambda request: RateLimited() if "limit" in request.prompt else None

    assert await _chat(oai_client, "abc") == "#0 ABC"
    tool = await oai_client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "tool"}]
    )
    assert tool.choices[0].finish_reason == "tool_calls"
    [call] = tool.choices[0].message.tool_calls or []
    assert call.id == "call_fixed"
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert call.function.arguments == '{"q":1}'  # type: ignore[union-attr]
    custom = await oai_client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "reply"}]
    )
    assert custom.usage
    assert (custom.usage.prompt_tokens, custom.usage.completion_tokens) == (7, 42)
    assert custom.usage.prompt_tokens_details
    assert custom.usage.prompt_tokens_details.cached_tokens == 1
    with pytest.raises(openai.RateLimitError):
        await _chat(oai_client, "please limit me")
    assert oai.request_count == 4
    assert oai.status_counts == {200: 3, 429: 1}


async def test_openai_stream_with_usage(oai: OpenAIServer, oai_client: openai.AsyncOpenAI) -> None:
    stream = await oai_client.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": "a b c d"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage

    assert "".join(text) == "echo: a b c d"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, 5)


async def test_openai_respond_errors_are_reported(clock: Clock) -> None:
    def boom(request: ProviderRequest) -> str:
        raise ValueError("scripted bug")

    server = OpenAIServer(respond=boom, clock=clock)

    async def use_server() -> None:
        async with server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
            try:
                with pytest.raises(openai.InternalServerError):
                    await _chat(client)
            finally:
                await client.close()

    with pytest.raises(ExceptionGroup) as group:  # re-raised when the server context exits
        await use_server()

    assert [str(e) for e in group.value.exceptions] == ["scripted bug"]
    assert [e.status for e in server.exchanges] == [500]
    assert isinstance(server.exchanges[0].error, ValueError)


async def test_openai_api_key_and_models(clock: Clock) -> None:
    async with OpenAIServer(api_key="sk-right", models=[GPT], clock=clock) as server:
        wrong = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
        right = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-right", max_retries=0)
        try:
            with pytest.raises(openai.AuthenticationError) as auth:
                await _chat(wrong)
            assert auth.value.code == "invalid_api_key"
            with pytest.raises(openai.NotFoundError) as missing:
                await right.chat.completions.create(
                    model="gpt-unknown", messages=[{"role": "user", "content": "x"}]
                )
            assert missing.value.code == "model_not_found"
            assert [m.id async for m in right.models.list()] == [GPT]
        finally:
            await wrong.close()
            await right.close()


async def test_pydantic_ai_openai_structured_output(oai: OpenAIServer) -> None:
    model = OpenAIChatModel(GPT, provider=OpenAIProvider(base_url=oai.base_url, api_key="test"))
    agent = Agent(model, output_type=City)
    oai.respond = lambda request: {"name": request.prompt, "population": 2_100_000}

    async with agent:
        result = await agent.run("Paris")

    assert result.output == City(name="Paris", population=2_100_000)
    [request] = oai.requests
    assert request.tool_choice == "required"
    assert request.forced_tool is not None
    assert request.forced_tool.name == "final_result"
    assert result.usage.input_tokens == 1
    assert result.usage.output_tokens == 2  # 'final_result' + the JSON arguments


async def test_pydantic_ai_openai_sdk_retries(oai: OpenAIServer) -> None:
    model = OpenAIChatModel(GPT, provider=OpenAIProvider(base_url=oai.base_url, api_key="test"))
    agent = Agent(model)

    async with agent:
        oai.script(RateLimited(retry_after=0.01))
        result = await agent.run("retried")  # the provider's AsyncOpenAI retries twice by default
        assert result.output == "echo: retried"
        assert oai.counts["chat_completions"] == 2

        oai.script(RateLimited(retry_after=0.01))
        with pytest.raises(ModelRateLimitError):  # ModelSettings(max_retries=0) disables them
            await agent.run("once", model_settings={"max_retries": 0})
        assert oai.counts["chat_completions"] == 3


async def test_pydantic_ai_openai_malformed_then_valid(oai: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="test", max_retries=0)
    agent = Agent(
        OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client)), output_type=City
    )
    try:
        oai.script(Malformed())
        result = await agent.run("Rome")  # pydantic-ai retries the invalid tool call once
        assert result.output == City(name="Rome", population=0)
        assert oai.counts["chat_completions"] == 2

        oai.script(Malformed(), Malformed())
        with pytest.raises(UnexpectedModelBehavior):
            await agent.run("Rome")
        assert oai.counts["chat_completions"] == 4

        oai.script(RateLimited(retry_after=3.0))
        with pytest.raises(ModelRateLimitError) as limited:
            await agent.run("Rome")
        assert limited.value.retry_after == 3.0
    finally:
        await client.close()


async def test_langchain_chat_openai(oai: OpenAIServer) -> None:
    llm = ChatOpenAI(base_url=oai.base_url, api_key="test", model=GPT, max_retries=0)  # type: ignore[arg-type]
    try:
        message = await llm.ainvoke("hello langchain")
        assert message.content == "echo: hello langchain"
        assert message.usage_metadata is not None
        assert message.usage_metadata["input_tokens"] == 2
        assert message.usage_metadata["output_tokens"] == 3

        structured = llm.with_structured_output(City)
        city = await structured.ainvoke("Oslo")
        assert city == City(name="Oslo", population=0)
        assert oai.requests[-1].response_schema is not None  # sent as response_format json_schema
    finally:
        await llm.root_async_client.close()


# ------------------------------------------------------------------------------- Anthropic


async def test_anthropic_message(
    claude: AnthropicServer, claude_client: anthropic.AsyncAnthropic
) -> None:
    message = await claude_client.messages.create(
        model=CLAUDE,
        max_tokens=200,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )

    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    [request] = claude.requests
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == "Bearer test"  # anthropic 2.x sends a bearer token
    assert "anthropic-version" in request.headers


async def test_anthropic_prompt_caching(
    claude: AnthropicServer, claude_client: anthropic.AsyncAnthropic, clock: Clock
) -> None:
    system: list[anthropic.types.TextBlockParam] = [
        {"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}
    ]

    async def usage(question: str) -> anthropic.types.Usage:
        message = await claude_client.messages.create(
            model=CLAUDE,
            max_tokens=100,
            system=system,
            messages=[{"role": "user", "content": question}],
        )
        return message.usage

    first = await usage("one")
    assert (
        first.input_tokens,
        first.cache_creation_input_tokens,
        first.cache_read_input_tokens,
    ) == (
        1,
        1100,
        0,
    )
    assert first.cache_creation
    assert first.cache_creation.ephemeral_5m_input_tokens == 1100
    second = await usage("two")
    assert (
        second.input_tokens,
        second.cache_creation_input_tokens,
        second.cache_read_input_tokens,
    ) == (
        1,
        0,
        1100,
    )
    clock.now += 301  # the 5-minute TTL runs out
    third = await usage("three")
    assert third.cache_creation_input_tokens == 1100


async def test_anthropic_errors(
    claude: AnthropicServer, claude_client: anthropic.AsyncAnthropic
) -> None:
    claude.script(RateLimited(retry_after=1.5), ServerError(529), ServerError(500))

    with pytest.raises(anthropic.RateLimitError) as limited:
        await _message(claude_client)
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await _message(claude_client)
    with pytest.raises(anthropic.InternalServerError) as internal:
        await _message(claude_client)

    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.response.headers["retry-after-ms"] == "1500"
    assert limited.value.type == "rate_limit_error"
    assert limited.value.request_id
    assert limited.value.request_id.startswith("req_")
    assert isinstance(overloaded.value, anthropic.InternalServerError)
    assert (overloaded.value.status_code, overloaded.value.type) == (529, "overloaded_error")
    assert (internal.value.status_code, internal.value.type) == (500, "api_error")
    assert claude.counts["messages"] == 3


async def test_anthropic_hang_is_cut_by_timeout(claude: AnthropicServer) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=claude.url, api_key="test", max_retries=0, timeout=0.2
    )
    claude.script(Hang())
    try:
        with pytest.raises(anthropic.APITimeoutError):
            await _message(client)
    finally:
        await client.close()
    assert claude.counts["messages"] == 1


async def test_anthropic_tool_use_and_stream(
    claude: AnthropicServer, claude_client: anthropic.AsyncAnthropic
) -> None:
    message = await claude_client.messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=[
            {
                "name": "save_city",
                "input_schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            }
        ],
        tool_choice={"type": "tool", "name": "save_city"},
        messages=[{"role": "user", "content": "Bern"}],
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("save_city", {"name": "Bern"})

    async with claude_client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: one two three"
    assert final.usage.output_tokens == 4


# ------------------------------------------------------------------------- across the SDKs


@pytest.mark.parametrize(
    ("fault", "errors"),
    [
        (
            Disconnect(),
            {
                "gemini": httpx2.RemoteProtocolError,  # not wrapped by google-genai
                "openai": openai.APIConnectionError,
                "anthropic": anthropic.APIConnectionError,
            },
        ),
        (
            Malformed(raw_body=True),
            {
                "gemini": json.JSONDecodeError,
                "openai": json.JSONDecodeError,
                "anthropic": json.JSONDecodeError,
            },
        ),
    ],
    ids=["disconnect", "raw-malformed"],
)
async def test_connection_level_faults(
    fault: Disconnect | Malformed,
    errors: dict[str, type[Exception]],
    gemini: GeminiServer,
    genai_client: genai.Client,
    oai: OpenAIServer,
    oai_client: openai.AsyncOpenAI,
    claude: AnthropicServer,
    claude_client: anthropic.AsyncAnthropic,
) -> None:
    for server in (gemini, oai, claude):
        server.script(fault)

    with pytest.raises(errors["gemini"]):
        await genai_client.aio.models.generate_content(model=GEMINI, contents="x")
    with pytest.raises(errors["openai"]):
        await _chat(oai_client)
    with pytest.raises(errors["anthropic"]):
        await _message(claude_client)

    for server in (gemini, oai, claude):
        assert server.request_count == 1
        assert server.fault_counts == {type(fault).__name__: 1}


async def test_malformed_text_on_every_sdk(
    gemini: GeminiServer,
    genai_client: genai.Client,
    oai: OpenAIServer,
    oai_client: openai.AsyncOpenAI,
    claude: AnthropicServer,
    claude_client: anthropic.AsyncAnthropic,
) -> None:
    broken = Malformed(text="{not json")
    for server in (gemini, oai, claude):
        server.script(broken)

    gemini_reply = await genai_client.aio.models.generate_content(model=GEMINI, contents="x")
    message = await _message(claude_client)

    assert gemini_reply.text == "{not json"
    assert await _chat(oai_client) == "{not json"
    assert message.content[0].type == "text"
    assert message.content[0].text == "{not json"


async def test_script_kinds_and_fault_fn(gemini: GeminiServer, genai_client: genai.Client) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        gemini.script(RateLimited(), kind="generate")
    gemini.script(ServerError(503))  # any generation request, streaming included
    gemini.script(RateLimited(), kind="cache_create")
    gemini.fault_fn = lambda request: ErrorResponse(404) if request.kind == "count_tokens" else None
    assert gemini.pending_faults() == 2
    assert gemini.pending_faults("stream_generate_content") == 1

    with pytest.raises(genai_errors.ServerError):
        async for _ in await genai_client.aio.models.generate_content_stream(
            model=GEMINI, contents="x"
        ):
            pass
    with pytest.raises(genai_errors.ClientError) as limited:
        await genai_client.aio.caches.create(
            model=GEMINI, config=types.CreateCachedContentConfig(contents="x")
        )
    with pytest.raises(genai_errors.ClientError) as missing:
        await genai_client.aio.models.count_tokens(model=GEMINI, contents="x")

    assert (limited.value.code, missing.value.code) == (429, 404)
    assert gemini.pending_faults() == 0
    assert gemini.counts == {"stream_generate_content": 1, "cache_create": 1, "count_tokens": 1}
    assert gemini.caches == {}


# ------------------------------------------------------------------------------ HTTP layer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_http_keep_alive_chunked_and_gzip_bodies(oai: OpenAIServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", oai.port)
    try:
        payload = json.dumps({"model": GPT, "messages": [{"role": "user", "content": "chunked"}]})
        data = payload.encode()
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (data[:10], data[10:]))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n" + chunked + b"0\r\n\r\n"
        )
        status, headers, body = await _read_response(reader)
        assert status == 200
        assert headers["connection"] == "keep-alive"
        assert json.loads(body)["choices"][0]["message"]["content"] == "echo: chunked"

        zipped = gzip.compress(payload.replace("chunked", "gzipped").encode())
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(zipped)}\r\nConnection: close\r\n\r\n".encode()
            + zipped
        )
        status, headers, body = await _read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        assert json.loads(body)["choices"][0]["message"]["content"] == "echo: gzipped"
        assert await reader.read() == b""  # the server closed the connection as asked

        assert oai.request_count == 2
    finally:
        writer.close()
        await writer.wait_closed()


async def test_unknown_path_and_invalid_json(
    oai: OpenAIServer, oai_client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai_client.post("/nope", cast_to=object, body={})
    reader, writer = await asyncio.open_connection("127.0.0.1", oai.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x}"
        )
        status, _, body = await _read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert oai.counts == {"unknown": 2}


async def test_close_drops_hung_connections_and_leaves_no_tasks(clock: Clock) -> None:
    before = asyncio.all_tasks()
    server = GeminiServer(clock=clock)
    await server.start()
    server.script(Hang(), Hang())
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    body = json.dumps({"contents": [{"parts": [{"text": "x"}]}]}).encode()
    for _, writer in connections:
        writer.write(
            f"POST /v1/models/{GEMINI}:generateContent HTTP/1.1\r\nHost: x\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    for _ in range(100):
        if server.in_flight == 2:
            break
        await asyncio.sleep(0.01)
    assert server.in_flight == 2

    await server.close()

    assert asyncio.all_tasks() == before
    assert server.open_connections == 0
    for reader, writer in connections:
        assert await reader.read() == b""  # dropped without a response
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


# ------------------------------------------------------------------------------- helpers


def test_example_for_schema() -> None:
    schema = {
        "$defs": {"Kind": {"enum": ["a", "b"]}},
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 5},
            "count": {"type": "integer", "minimum": 3},
            "ratio": {"type": "number"},
            "kind": {"$ref": "#/$defs/Kind"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
            "optional": {"type": "string"},
        },
        "required": ["name", "count", "ratio", "kind", "tags", "maybe"],
    }
    assert example_for_schema(schema, "ab") == {
        "name": "abxxx",
        "count": 3,
        "ratio": 0.0,
        "kind": "a",
        "tags": ["ab", "ab"],
        "maybe": False,
    }
    assert example_for_schema({"type": "STRING"}, "gemini-style") == "gemini-style"


def test_count_tokens() -> None:
    assert count_tokens("") == 1
    assert count_tokens("  one\ttwo\nthree ") == 3
