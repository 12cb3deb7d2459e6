"""Out-of-credit, wrong-key and unknown-model answers of the real SDKs, through the emulators.

Each provider's emulator answers with the provider's real status and body
(:class:`InsufficientQuota`, :class:`InvalidAPIKey`, :class:`ModelNotFound`, scripted per
request); the real SDK raises its own exception; the results carry the §N3 error category and
the default fail-fast categories stop the batch at the first wrong key or empty account.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    AnthropicStrategy,
    BatchResult,
    GeminiModel,
    GeminiStrategy,
    GuardrailConfig,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    OpenAIStrategy,
    ParallelBatchProcessor,
    ProcessingEvent,
    PydanticAIStrategy,
)
from async_batch_llm.classifiers import (
    AnthropicErrorClassifier,
    GeminiErrorClassifier,
    OpenAIErrorClassifier,
)
from async_batch_llm.strategies import ErrorClassifier
from async_batch_llm.testing.servers import (
    AnthropicServer,
    Fault,
    GeminiServer,
    InsufficientQuota,
    InvalidAPIKey,
    ModelNotFound,
    OpenAIServer,
    ProviderServer,
)
from tests.conftest import EventRecorder

from ._support import config

pytestmark = pytest.mark.timeout(30)

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
GEMINI = "gemini-2.5-flash"

NO_ABORT = GuardrailConfig(abort_on_error_categories=frozenset())


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as running:
        yield running


@pytest.fixture
async def anthropic_server() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as running:
        yield running


@pytest.fixture
async def gemini_server() -> AsyncIterator[GeminiServer]:
    async with GeminiServer() as running:
        yield running


def gemini_text(response: LLMResponse) -> str:
    return response.text


async def run(
    strategy: LLMCallStrategy[Any],
    count: int,
    *,
    classifier: ErrorClassifier | None,
    workers: int = 1,
    guardrails: GuardrailConfig | None = None,
    observers: list[Any] | None = None,
) -> BatchResult[Any, None]:
    settings = config(workers, attempts=3)
    if guardrails is not None:
        settings.guardrails = guardrails
    processor = ParallelBatchProcessor[str, Any, None](
        config=settings, error_classifier=classifier, observers=observers
    )
    try:
        for n in range(count):
            await processor.add_work(
                LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"question {n}")
            )
        return await processor.process_all()
    finally:
        await processor.shutdown()


# ------------------------------------------------------------------ one answer, one category

Case = tuple[Fault, str]

CASES: list[Case] = [
    (InsufficientQuota(), "insufficient_quota"),
    (InvalidAPIKey(), "authentication"),
    (ModelNotFound(), "model_not_found"),
]


@pytest.mark.parametrize(("fault", "category"), CASES, ids=["quota", "401", "404"])
async def test_openai_answers_carry_their_category_and_are_not_retried(
    openai_server: OpenAIServer, fault: Fault, category: str
) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)
    openai_server.script(fault, fault, fault)
    try:
        batch = await run(
            OpenAIStrategy(client, GPT), 1, classifier=OpenAIErrorClassifier(), guardrails=NO_ABORT
        )
    finally:
        await client.close()
    result = batch.results[0]
    assert result.success is False
    assert result.error_category == category
    assert openai_server.request_count == 1  # none of the three is worth a second attempt
    if category == "insufficient_quota":
        assert "out of credit" in (result.error or "")
        assert openai_server.status_counts[429] == 1


@pytest.mark.parametrize(("fault", "category"), CASES, ids=["credit", "401", "404"])
async def test_anthropic_answers_carry_their_category_and_are_not_retried(
    anthropic_server: AnthropicServer, fault: Fault, category: str
) -> None:
    client = anthropic.AsyncAnthropic(base_url=anthropic_server.url, api_key="t", max_retries=0)
    anthropic_server.script(fault, fault, fault)
    try:
        batch = await run(
            AnthropicStrategy(client, CLAUDE, max_tokens=64),
            1,
            classifier=AnthropicErrorClassifier(),
            guardrails=NO_ABORT,
        )
    finally:
        await client.close()
    result = batch.results[0]
    assert result.error_category == category
    assert anthropic_server.request_count == 1
    if category == "insufficient_quota":
        assert "credit balance is too low" in (result.error or "")


@pytest.mark.parametrize(
    ("fault", "category"),
    [(InvalidAPIKey(), "authentication"), (ModelNotFound(), "model_not_found")],
    ids=["bad-key", "404"],
)
async def test_gemini_answers_carry_their_category(
    gemini_server: GeminiServer, fault: Fault, category: str
) -> None:
    client = genai.Client(api_key="t", http_options=types.HttpOptions(base_url=gemini_server.url))
    gemini_server.script(fault, fault, fault)
    try:
        batch = await run(
            GeminiStrategy(GeminiModel(GEMINI, client), gemini_text),
            1,
            classifier=GeminiErrorClassifier(),
            guardrails=NO_ABORT,
        )
    finally:
        await client.aio.aclose()
    assert batch.results[0].error_category == category


async def test_gemini_exhausted_quota_is_a_rate_limit(gemini_server: GeminiServer) -> None:
    # Gemini has no out-of-credit answer apart from its 429 RESOURCE_EXHAUSTED.
    client = genai.Client(api_key="t", http_options=types.HttpOptions(base_url=gemini_server.url))
    gemini_server.script(InsufficientQuota())
    try:
        batch = await run(
            GeminiStrategy(GeminiModel(GEMINI, client), gemini_text),
            1,
            classifier=GeminiErrorClassifier(),
        )
    finally:
        await client.aio.aclose()
    assert batch.results[0].error_category == "rate_limit"


async def test_pydantic_ai_wrapped_errors_carry_the_category(openai_server: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="t", max_retries=0)
    agent = Agent(OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client)))
    openai_server.script(InvalidAPIKey(), InsufficientQuota())
    try:
        batch = await run(
            PydanticAIStrategy(agent), 2, classifier=OpenAIErrorClassifier(), guardrails=NO_ABORT
        )
    finally:
        await client.close()
    assert sorted(r.error_category or "" for r in batch.results) == [
        "authentication",
        "insufficient_quota",
    ]


# -------------------------------------------------------------------------------- fail fast

Build = Callable[[ProviderServer], tuple[LLMCallStrategy[Any], ErrorClassifier, Any]]


def openai_setup(server: ProviderServer) -> tuple[LLMCallStrategy[Any], ErrorClassifier, Any]:
    assert isinstance(server, OpenAIServer)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    return OpenAIStrategy(client, GPT), OpenAIErrorClassifier(), client.close


def anthropic_setup(server: ProviderServer) -> tuple[LLMCallStrategy[Any], ErrorClassifier, Any]:
    assert isinstance(server, AnthropicServer)
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0)
    return (
        AnthropicStrategy(client, CLAUDE, max_tokens=64),
        AnthropicErrorClassifier(),
        client.close,
    )


async def test_insufficient_quota_on_every_call_stops_10000_items_after_at_most_50_calls(
    openai_server: OpenAIServer,
) -> None:
    openai_server.fault_fn = lambda request: InsufficientQuota()
    strategy, classifier, close = openai_setup(openai_server)
    recorder = EventRecorder()
    started = time.monotonic()
    try:
        batch = await run(strategy, 10_000, classifier=classifier, workers=50, observers=[recorder])
    finally:
        await close()
    elapsed = time.monotonic() - started

    assert batch.termination.kind == "fail_fast"
    assert batch.termination.error_category == "insufficient_quota"
    assert len(batch.results) == 10_000
    assert openai_server.request_count <= 50
    assert recorder.of(ProcessingEvent.COOLDOWN_STARTED) == []
    categories = {r.error_category for r in batch.results}
    assert categories <= {"insufficient_quota", "fail_fast"}
    # Generous for a shared CI machine; the target is 1 s on a quiet one.
    assert elapsed < 10.0
    print(f"fail-fast: {openai_server.request_count} calls, {elapsed:.2f} s for 10,000 items")


@pytest.mark.parametrize("setup", [openai_setup, anthropic_setup], ids=["openai", "anthropic"])
async def test_a_wrong_key_stops_the_batch_at_the_first_answer(setup: Build) -> None:
    server: ProviderServer = (
        OpenAIServer(api_key="right") if setup is openai_setup else AnthropicServer(api_key="right")
    )
    async with server:
        strategy, classifier, close = setup(server)  # the client presents "t"
        try:
            batch = await run(strategy, 200, classifier=classifier, workers=4)
        finally:
            await close()
        assert batch.termination.kind == "fail_fast"
        assert batch.termination.error_category == "authentication"
        assert server.request_count <= 4
        assert len(batch.results) == 200
        assert batch.failed == 200


# ------------------------------------------------------------------- the emulators' bodies


async def test_the_emulators_answer_account_faults_with_the_real_status_and_body() -> None:
    async with OpenAIServer() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-wrong-key", max_retries=0)
        server.script(InsufficientQuota(), InvalidAPIKey(), ModelNotFound())
        errors: list[Any] = []
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(
                    model="gpt-nope", messages=[{"role": "user", "content": "x"}]
                )
            errors.append(caught.value)
        await client.close()
    quota, key, model = errors
    assert (quota.status_code, quota.code, quota.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert (key.status_code, key.code) == (401, "invalid_api_key")
    assert "Incorrect API key provided" in str(key)
    assert (model.status_code, model.code) == (404, "model_not_found")
    assert "The model `gpt-nope` does not exist" in str(model)

    async with AnthropicServer() as server:
        sdk = anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0)
        server.script(InsufficientQuota(), InvalidAPIKey(), ModelNotFound())
        kinds: list[tuple[type, int, str]] = []
        for _ in range(3):
            with pytest.raises(anthropic.APIStatusError) as raised:
                await sdk.messages.create(
                    model="claude-nope",
                    max_tokens=8,
                    messages=[{"role": "user", "content": "x"}],
                )
            body: Any = raised.value.body
            kinds.append((type(raised.value), raised.value.status_code, body["error"]["type"]))
        await sdk.close()
    assert kinds == [
        (anthropic.BadRequestError, 400, "invalid_request_error"),
        (anthropic.AuthenticationError, 401, "authentication_error"),
        (anthropic.NotFoundError, 404, "not_found_error"),
    ]

    async with GeminiServer() as server:
        gclient = genai.Client(api_key="t", http_options=types.HttpOptions(base_url=server.url))
        server.script(InvalidAPIKey(), ModelNotFound())
        answers: list[tuple[int, str | None]] = []
        for _ in range(2):
            with pytest.raises(genai.errors.ClientError) as gerr:
                await gclient.aio.models.generate_content(model="gemini-nope", contents="x")
            answers.append((gerr.value.code, gerr.value.status))
        await gclient.aio.aclose()
    assert answers == [(400, "INVALID_ARGUMENT"), (404, "NOT_FOUND")]


async def test_batch_timeout_returns_on_time_through_the_real_sdk(
    openai_server: OpenAIServer,
) -> None:
    """1 s budget on a 10 s job (80 calls of 0.5 s, 4 workers): returns promptly, one result
    per item, no request after the deadline."""
    arrivals: list[float] = []

    def record(request: Any) -> None:
        arrivals.append(time.monotonic())

    openai_server.fault_fn = record
    openai_server.latency = 0.5
    strategy, classifier, close = openai_setup(openai_server)
    started = time.monotonic()
    try:
        batch = await run(
            strategy,
            80,
            classifier=classifier,
            workers=4,
            guardrails=GuardrailConfig(batch_timeout=1.0),
        )
    finally:
        await close()
    elapsed = time.monotonic() - started

    assert batch.termination.kind == "batch_timeout"
    assert len(batch.results) == 80
    assert elapsed < 1.0 + 1.0  # the target is 0.5 s of slack; CI machines are shared
    assert all(at - started < 1.0 for at in arrivals)
    assert {r.error_category for r in batch.results if not r.success} == {"batch_timeout"}
    print(f"batch_timeout=1.0: returned after {elapsed:.2f} s, {len(arrivals)} requests")
