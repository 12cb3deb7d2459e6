"""A 429 storm with ``Retry-After: 2`` pauses every worker for at least 2 s, with each real SDK.

The storm: the first ``WORKERS`` requests (one per worker) are held by the server until all of
them have arrived, then every one is answered 429 with a 2 s retry delay, sent the way the
provider sends it (``retry-after``/``retry-after-ms`` headers for OpenAI and Anthropic, a
``google.rpc.RetryInfo`` detail for Gemini). ``RateLimitConfig(cooldown_seconds=0.1)``, so a
pause of 2 s can only come from the provider's delay. Real time: the servers stamp arrivals with
``time.monotonic``, the clock the processor's event loop runs on.

Measured from the server's side: no request arrives between the last storm request and 2 s
after it, the processor ran exactly one cooldown of exactly the provider's delay, and every
item still succeeds (the rate-limited ones on their retry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from langchain_openai import ChatOpenAI
from pydantic import SecretStr
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BaseObserver,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm._internal.retry_after import retry_after_seconds
from async_batch_llm.models import GeminiModel
from async_batch_llm.testing.servers import (
    AnthropicServer,
    GeminiServer,
    OpenAIServer,
    ProviderRequest,
    ProviderServer,
    RateLimited,
    ResponseValue,
    ServerError,
    default_respond,
)

pytestmark = pytest.mark.timeout(20)

logger = logging.getLogger(__name__)

WORKERS = 4
ITEMS = 12
RETRY_AFTER = 2.0
COOLDOWN = 0.1  # the processor's own cooldown: far below the provider's delay
GPT, CLAUDE, GEMINI = "gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"


class Storm:
    """Response function: the first ``width`` requests wait for each other, then all get 429."""

    def __init__(self, width: int, retry_after: float | None) -> None:
        self.width = width
        self.retry_after = retry_after
        self._arrived = 0
        self._all_in = asyncio.Event()

    async def __call__(self, request: ProviderRequest) -> ResponseValue:
        if request.index >= self.width:
            return default_respond(request)
        self._arrived += 1
        if self._arrived == self.width:
            self._all_in.set()
        await asyncio.wait_for(self._all_in.wait(), timeout=5.0)
        return RateLimited(retry_after=self.retry_after)


class Cooldowns(BaseObserver):
    """Records the cooldown events the processor emits."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.ended: list[dict[str, Any]] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.COOLDOWN_STARTED:
            self.started.append(data)
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            self.ended.append(data)


# --------------------------------------------------------------------------- strategies


class OpenAIChat(LLMCallStrategy[str]):
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        response = await self.client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": prompt}]
        )
        usage = response.usage
        assert usage is not None
        return response.choices[0].message.content or "", {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }


class AnthropicMessages(LLMCallStrategy[str]):
    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        message = await self.client.messages.create(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": prompt}]
        )
        block = message.content[0]
        assert block.type == "text"
        usage = message.usage
        return block.text, {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }


def response_text(response: LLMResponse) -> str:
    return response.text


@dataclass
class Setup:
    server: ProviderServer
    strategy: LLMCallStrategy[Any]


SetupFactory = Callable[[Storm], AbstractAsyncContextManager[Setup]]


@asynccontextmanager
async def openai_sdk(storm: Storm) -> AsyncIterator[Setup]:
    async with OpenAIServer(respond=storm, clock=time.monotonic) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        try:
            yield Setup(server, OpenAIChat(client))
        finally:
            await client.close()


@asynccontextmanager
async def anthropic_sdk(storm: Storm) -> AsyncIterator[Setup]:
    async with AnthropicServer(respond=storm, clock=time.monotonic) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
        try:
            yield Setup(server, AnthropicMessages(client))
        finally:
            await client.close()


@asynccontextmanager
async def gemini_sdk(storm: Storm) -> AsyncIterator[Setup]:
    async with GeminiServer(respond=storm, clock=time.monotonic) as server:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
        try:
            yield Setup(server, GeminiStrategy(GeminiModel(GEMINI, client), response_text))
        finally:
            await client.aio.aclose()


@asynccontextmanager
async def pydantic_ai_google(storm: Storm) -> AsyncIterator[Setup]:
    # pydantic-ai does not read Gemini's RetryInfo itself: the delay is found on the
    # google-genai error it raises from (ModelRateLimitError.__cause__.details).
    async with GeminiServer(respond=storm, clock=time.monotonic) as server:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
        try:
            agent = Agent(GoogleModel(GEMINI, provider=GoogleProvider(client=client)))
            yield Setup(server, PydanticAIStrategy[str](agent))
        finally:
            await client.aio.aclose()


SETUPS: dict[str, SetupFactory] = {
    "openai": openai_sdk,
    "anthropic": anthropic_sdk,
    "gemini": gemini_sdk,
    "pydantic-ai-google": pydantic_ai_google,
}


async def run_storm(
    factory: SetupFactory, retry_after: float | None
) -> tuple[ProviderServer, list[Any], Cooldowns, dict[str, Any]]:
    storm = Storm(WORKERS, retry_after)
    cooldowns = Cooldowns()
    config = ProcessorConfig(
        max_workers=WORKERS,
        timeout_per_item=10.0,
        retry=RetryConfig(max_attempts=3, initial_wait=0.01, max_wait=0.01, jitter=False),
        rate_limit=RateLimitConfig(
            cooldown_seconds=COOLDOWN,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )
    async with factory(storm) as setup:
        processor = ParallelBatchProcessor[str, Any, None](config=config, observers=[cooldowns])
        async with processor:
            for i in range(ITEMS):
                await processor.add_work(
                    LLMWorkItem(item_id=f"item {i}", strategy=setup.strategy, prompt=f"item {i}")
                )
            result = await processor.process_all()
            stats = await processor.get_stats()
    return setup.server, result.results, cooldowns, stats


def pause_after_storm(server: ProviderServer) -> float:
    """Seconds between the last storm request's arrival and the next request's arrival."""
    storm = server.requests[:WORKERS]
    after = server.requests[WORKERS:]
    return min(r.received_at for r in after) - max(r.received_at for r in storm)


@pytest.mark.parametrize("name", SETUPS)
async def test_retry_after_pauses_every_worker(name: str) -> None:
    server, results, cooldowns, stats = await run_storm(SETUPS[name], RETRY_AFTER)

    pause = pause_after_storm(server)
    logger.info("%s: pause after the 429 storm %.3f s", name, pause)
    assert [e.status for e in server.exchanges[:WORKERS]] == [429] * WORKERS
    # Every worker was rate-limited at once, and none sent anything for the provider's 2 s.
    assert RETRY_AFTER <= pause < RETRY_AFTER + 1.0
    assert [c["duration"] for c in cooldowns.started] == [RETRY_AFTER]  # one cooldown, 2 s
    assert cooldowns.ended[0]["duration"] >= RETRY_AFTER
    assert stats["rate_limit_count"] == WORKERS
    # No item lost: the rate-limited ones succeeded on their retry.
    assert sorted(r.item_id for r in results if r.success) == sorted(
        f"item {i}" for i in range(ITEMS)
    )
    assert all(r.output == f"echo: {r.item_id}" for r in results)
    assert server.request_count == ITEMS + WORKERS
    assert server.status_counts == {429: WORKERS, 200: ITEMS}


@pytest.mark.parametrize("name", SETUPS)
async def test_without_retry_after_the_pause_is_the_configured_cooldown(name: str) -> None:
    server, results, cooldowns, _ = await run_storm(SETUPS[name], None)

    pause = pause_after_storm(server)
    logger.info("%s: pause after a 429 storm without Retry-After %.3f s", name, pause)
    assert COOLDOWN <= pause < 1.0
    assert [c["duration"] for c in cooldowns.started] == [COOLDOWN]
    assert all(r.success for r in results)
    assert server.status_counts == {429: WORKERS, 200: ITEMS}


# --------------------------------------------------------------------------- where the delay is


@asynccontextmanager
async def pydantic_ai_model(provider: str, retry: float) -> AsyncIterator[tuple[Model, Any]]:
    """A pydantic-ai model whose next request is rate-limited with a ``retry`` s delay."""
    if provider == "openai":
        async with OpenAIServer() as server:
            server.script(RateLimited(retry_after=retry))
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
            try:
                yield OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client)), server
            finally:
                await client.close()
    elif provider == "anthropic":
        async with AnthropicServer() as server:
            server.script(RateLimited(retry_after=retry))
            sdk = anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0)
            try:
                provided = AnthropicProvider(anthropic_client=sdk)
                yield AnthropicModel(CLAUDE, provider=provided), server
            finally:
                await sdk.close()
    else:
        async with GeminiServer() as server:
            server.script(RateLimited(retry_after=retry))
            options = types.HttpOptions(base_url=server.url)
            google = genai.Client(api_key="t", http_options=options)
            try:
                yield GoogleModel(GEMINI, provider=GoogleProvider(client=google)), server
            finally:
                await google.aio.aclose()


@pytest.mark.parametrize(
    ("provider", "retry_after_attribute"),
    [
        ("openai", 2.5),  # pydantic-ai copies the SDK's parsed Retry-After...
        ("anthropic", 2.5),
        ("google", None),  # ...but not Gemini's RetryInfo, which stays on __cause__.details
    ],
)
async def test_retry_after_is_found_on_pydantic_ai_rate_limit_errors(
    provider: str, retry_after_attribute: float | None
) -> None:
    async with pydantic_ai_model(provider, 2.5) as (model, _):
        with pytest.raises(ModelRateLimitError) as caught:
            await Agent(model).run("x")

    error = caught.value
    assert isinstance(error, ModelHTTPError)
    assert error.status_code == 429
    assert error.retry_after == retry_after_attribute
    assert retry_after_seconds(error) == 2.5


async def test_retry_after_is_found_on_langchain_errors() -> None:
    async with OpenAIServer() as server:
        server.script(RateLimited(retry_after=0.75))
        llm = ChatOpenAI(base_url=server.base_url, api_key=SecretStr("t"), model=GPT, max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as caught:
                await llm.ainvoke("x")
        finally:
            await llm.root_async_client.close()

    assert retry_after_seconds(caught.value) == 0.75  # from retry-after-ms: 750


async def test_retry_after_on_sdk_errors_fractional_and_server_errors() -> None:
    async with OpenAIServer() as oai, AnthropicServer() as claude, GeminiServer() as gemini:
        oai.script(RateLimited(retry_after=0.5), ServerError(503, retry_after=3.0))
        claude.script(RateLimited(retry_after=0.5), ServerError(529, retry_after=3.0))
        gemini.script(RateLimited(retry_after=0.5))
        openai_client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="t", max_retries=0)
        claude_client = anthropic.AsyncAnthropic(base_url=claude.url, api_key="t", max_retries=0)
        gemini_client = genai.Client(
            api_key="t", http_options=types.HttpOptions(base_url=gemini.url)
        )
        found: list[float | None] = []
        try:
            for _ in range(2):
                with pytest.raises(openai.APIStatusError) as openai_error:
                    await OpenAIChat(openai_client).execute("x", 1, 10.0)
                found.append(retry_after_seconds(openai_error.value))
                with pytest.raises(anthropic.APIStatusError) as claude_error:
                    await AnthropicMessages(claude_client).execute("x", 1, 10.0)
                found.append(retry_after_seconds(claude_error.value))
            with pytest.raises(genai.errors.ClientError) as gemini_error:
                await GeminiModel(GEMINI, gemini_client).generate("x")
            found.append(retry_after_seconds(gemini_error.value))
        finally:
            await openai_client.close()
            await claude_client.close()
            await gemini_client.aio.aclose()

    # retry-after-ms wins over the whole-second retry-after (which rounds 0.5 up to 1).
    assert found == [0.5, 0.5, 3.0, 3.0, 0.5]


class StrategyError(Exception):
    """What a user strategy might raise from the provider's error."""


async def test_retry_after_two_causes_deep() -> None:
    async with pydantic_ai_model("google", 2.5) as (model, _):
        try:
            await Agent(model).run("x")
        except ModelRateLimitError as error:
            wrapped = StrategyError("429 from the model")
            wrapped.__cause__ = error

    assert retry_after_seconds(wrapped) == 2.5


def test_retry_after_follows_implicit_chaining() -> None:
    class Provider429(Exception):
        retry_after = 1.5

    def strategy_call() -> None:
        try:
            raise Provider429("429")
        except Provider429:
            raise StrategyError("rate limited") from None

    with pytest.raises(StrategyError) as caught:
        strategy_call()
    # `from None` hides the context from tracebacks but keeps it on the exception.
    assert retry_after_seconds(caught.value) == 1.5

    def loop_error() -> BaseException:
        a, b = StrategyError("a"), StrategyError("b")
        a.__cause__, b.__cause__ = b, a
        return a

    assert retry_after_seconds(loop_error()) is None
