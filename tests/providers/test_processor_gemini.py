"""``ParallelBatchProcessor`` driving ``google-genai``'s ``Client`` through the Gemini strategies.

``GeminiStrategy`` (over ``GeminiModel``) and ``GeminiCachedStrategy`` call the real SDK, which
talks HTTP to a local :class:`GeminiServer`. The server counts words: ``"question number 3"`` is
3 prompt tokens, ``"echo: question number 3"`` 4 candidate tokens, and a request that uses a
cache also counts the cache's words as prompt tokens (``cachedContentTokenCount``). google-genai
does not retry on its own, so every request is one processor attempt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx2
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

from async_batch_llm import (
    GeminiCachedStrategy,
    GeminiStrategy,
    LLMResponse,
)
from async_batch_llm.classifiers import GeminiErrorClassifier
from async_batch_llm.models import GeminiModel
from async_batch_llm.strategies import DefaultErrorClassifier, ErrorInfo
from async_batch_llm.strategies.errors import DEFAULT_RATE_LIMIT_WAIT
from async_batch_llm.testing.servers import (
    Disconnect,
    ErrorResponse,
    Fault,
    GeminiServer,
    Hang,
    Malformed,
    ProviderRequest,
    RateLimited,
    Reply,
    ServerError,
)

from ._support import UNKNOWN, info, run

pytestmark = pytest.mark.timeout(15)

GEMINI = "gemini-2.5-flash"
DOCUMENT = "the quick brown fox jumps over the lazy dog"  # 9 tokens once cached


class City(BaseModel):
    name: str
    population: int


def text(response: LLMResponse) -> str:
    return response.text


def city(response: LLMResponse) -> City:
    return City.model_validate_json(response.text)


@pytest.fixture
async def server() -> AsyncIterator[GeminiServer]:
    async with GeminiServer() as running:
        yield running


@pytest.fixture
async def client(server: GeminiServer) -> AsyncIterator[genai.Client]:
    sdk = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
    yield sdk
    await sdk.aio.aclose()


# --------------------------------------------------------------------------- GeminiStrategy


async def test_batch_outputs_tokens_and_request_counts(
    server: GeminiServer, client: genai.Client
) -> None:
    prompts = [f"question number {i}" for i in range(12)]
    server.latency = 0.02  # long enough for the four workers to overlap

    result = await run(GeminiStrategy(GeminiModel(GEMINI, client), text), prompts, workers=4)

    assert (result.succeeded, result.failed) == (12, 0)
    for item in result.results:
        assert item.output == f"echo: {item.item_id}"
        assert item.token_usage == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert (result.total_input_tokens, result.total_output_tokens) == (36, 48)
    assert server.counts == {"generate_content": 12}
    assert server.max_in_flight == 4
    assert {r.body["generationConfig"]["temperature"] for r in server.requests} == {0.0}


async def test_invalid_output_is_retried_and_every_attempt_counted(
    server: GeminiServer, client: genai.Client
) -> None:
    reported: list[tuple[int, int]] = []

    def respond(request: ProviderRequest) -> Reply:
        tokens = (20 + request.index, 2 + request.index)
        reported.append(tokens)
        body = json.dumps({"name": request.prompt, "population": 3})
        return Reply(text=body, input_tokens=tokens[0], output_tokens=tokens[1])

    server.respond = respond
    server.script(Malformed())

    result = await run(GeminiStrategy(GeminiModel(GEMINI, client), city), ["Bern"])

    [item] = result.results
    assert item.output == City(name="Bern", population=3)
    assert reported == [(20, 2), (21, 3)]
    # GeminiStrategy attached the malformed reply's usage to the parser's ValidationError.
    assert item.token_usage == {"input_tokens": 41, "output_tokens": 5, "total_tokens": 46}
    assert server.counts == {"generate_content": 2}


async def test_server_error_retry_depends_on_the_classifier(
    server: GeminiServer, client: genai.Client
) -> None:
    strategy = GeminiStrategy(GeminiModel(GEMINI, client), text)
    server.script(ServerError(503))

    retried = await run(strategy, ["a"])  # DefaultErrorClassifier: "unknown", retryable
    assert retried.results[0].output == "echo: a"
    assert server.counts == {"generate_content": 2}

    server.script(ServerError(503))
    failed = await run(strategy, ["b"], classifier=GeminiErrorClassifier())  # spec §7.4 rule 4b
    assert failed.results[0].success is False
    assert failed.results[0].error is not None
    assert failed.results[0].error.startswith("ServerError: 503 UNAVAILABLE.")
    assert server.counts == {"generate_content": 3}


async def test_rate_limit_fails_after_the_cooldown_with_the_gemini_classifier(
    server: GeminiServer, client: genai.Client
) -> None:
    # Spec §4.8.1 quirk (mirror): the Gemini classifier marks rate limits non-retryable.
    server.script(RateLimited(retry_after=0.05))

    result = await run(
        GeminiStrategy(GeminiModel(GEMINI, client), text),
        ["a"],
        classifier=GeminiErrorClassifier(),
    )

    [item] = result.results
    assert item.success is False
    assert item.error is not None
    assert item.error.startswith("ClientError: 429 RESOURCE_EXHAUSTED.")
    assert server.counts == {"generate_content": 1}


# --------------------------------------------------------------------------- cached strategy


async def test_cached_strategy_one_cache_for_the_batch(
    server: GeminiServer, client: genai.Client
) -> None:
    strategy = GeminiCachedStrategy(
        model=GEMINI,
        client=client,
        cached_content=[types.Content(role="user", parts=[types.Part(text=DOCUMENT)])],
        cache_ttl_seconds=3600,
    )
    prompts = [f"question {i}" for i in range(9)]
    server.latency = 0.02

    result = await run(strategy, prompts, workers=3)

    assert (result.succeeded, result.failed) == (9, 0)
    for item in result.results:
        assert item.output == f"echo: {item.item_id}"
        assert item.token_usage == {
            "input_tokens": 2 + 9,
            "output_tokens": 3,
            "total_tokens": 14,
            "cached_input_tokens": 9,
        }
    assert result.total_cached_tokens == 81
    assert result.cache_hit_rate() == 81 / 99 * 100.0
    assert server.counts == {"cache_list": 1, "cache_create": 1, "generate_content": 9}
    [name] = server.caches
    assert {r.cached_content for r in server.requests if r.kind == "generate_content"} == {name}

    await strategy.delete_cache()

    assert server.caches == {}
    assert server.counts["cache_delete"] == 1


# --------------------------------------------------------------------------- classification


# fault → (GeminiErrorClassifier, DefaultErrorClassifier) for the errors google-genai raises.
# Documentation of spec §7.3/§7.4 against today's SDK; neither classifier is changed here.
CLASSIFICATION: dict[str, tuple[Fault, type[Exception], ErrorInfo, ErrorInfo]] = {
    "429-retry-info": (
        RateLimited(retry_after=2.0),
        errors.ClientError,
        info("rate_limit", False, rate_limit=True, wait=2.0),
        info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
    ),
    "500": (ServerError(500), errors.ServerError, info("server_error", False), UNKNOWN),
    "503": (ServerError(503), errors.ServerError, info("server_error", False), UNKNOWN),
    "504": (
        ServerError(504),
        errors.ServerError,
        info("server_timeout", True, timeout=True),
        UNKNOWN,  # "504 DEADLINE_EXCEEDED. ... Deadline expired ..." has no "timeout"
    ),
    "529": (ServerError(529), errors.ServerError, info("server_error", False), UNKNOWN),
    "400": (ErrorResponse(400), errors.ClientError, info("client_error", True), UNKNOWN),
    "403": (ErrorResponse(403), errors.ClientError, info("client_error", True), UNKNOWN),
    "timeout": (Hang(), httpx2.ReadTimeout, UNKNOWN, UNKNOWN),  # not wrapped by google-genai
    "connection": (Disconnect(), httpx2.RemoteProtocolError, UNKNOWN, UNKNOWN),
}


@pytest.mark.parametrize(
    ("fault", "raised", "gemini", "default"), CLASSIFICATION.values(), ids=CLASSIFICATION.keys()
)
async def test_classification_of_real_genai_errors(
    server: GeminiServer,
    fault: Fault,
    raised: type[Exception],
    gemini: ErrorInfo,
    default: ErrorInfo,
) -> None:
    options = types.HttpOptions(base_url=server.url, timeout=200)  # milliseconds
    sdk = genai.Client(api_key="test", http_options=options)
    server.script(fault)
    try:
        with pytest.raises(raised) as caught:
            await GeminiModel(GEMINI, sdk).generate("x")
    finally:
        await sdk.aio.aclose()

    assert type(caught.value) is raised
    assert GeminiErrorClassifier().classify(caught.value) == gemini
    assert DefaultErrorClassifier().classify(caught.value) == default
    assert server.request_count == 1
